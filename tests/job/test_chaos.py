"""Chaos: tokenizer actors are killed mid-shard (SIGKILL of the worker process and ray.kill),
several times; the finished output equals a clean run's byte for byte and verify is clean."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import ray

from pipeline.runner.job import run_tokenize
from pipeline.runner.verify import verify_output
from pipeline.sources.sample_corpus import write_sample_corpus
from tests.job.conftest import tiny_config

KILLS = 3
DELAY_S = 0.4  # per encode call, so each shard takes a few seconds and kills land mid-shard


def _kill_busy_actors(holder: dict, done: threading.Event, log: list) -> None:
    """Kill the actor of a shard that has been running for a while, wait for the scheduler to
    notice, repeat."""
    deadline = time.time() + 240
    while len(log) < KILLS and not done.is_set() and time.time() < deadline:
        scheduler = holder.get("scheduler")
        victim = None
        if scheduler is not None:
            for slot, shard, started in list(scheduler.in_flight.values()):
                if slot.info and not slot.dead and time.perf_counter() - started > 1.5 * DELAY_S:
                    victim = (slot, shard)
                    break
        if victim is None:
            time.sleep(0.05)
            continue
        slot, shard = victim
        deaths = scheduler.outcome.actor_deaths
        if len(log) % 2 == 0:
            os.kill(slot.info["pid"], signal.SIGKILL)
            log.append(("SIGKILL", shard.name))
        else:
            ray.kill(slot.handle)
            log.append(("ray.kill", shard.name))
        while scheduler.outcome.actor_deaths == deaths and not done.is_set():
            time.sleep(0.05)


def test_killing_actors_mid_shard_gives_the_clean_bytes(ray_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, num_shards=4, samples_per_shard=4, max_side=64)
    pattern = str(corpus / "sample-{000000..000003}.tar")
    tok_json = tmp_path / "slow.json"
    tok_json.write_text(json.dumps({"delay": DELAY_S}))

    def cfg(out):
        return tiny_config([pattern], out, num_actors=2, batch_size=2, max_shard_retries=10,
                           tokenizer_config=str(tok_json))

    holder: dict = {}
    done = threading.Event()
    log: list = []
    killer = threading.Thread(target=_kill_busy_actors, args=(holder, done, log), daemon=True)
    killer.start()
    try:
        rc = run_tokenize(cfg(tmp_path / "chaos"), on_scheduler=lambda s: holder.setdefault("scheduler", s))
    finally:
        done.set()
        killer.join(timeout=10)
    assert rc == 0
    assert len(log) == KILLS, log
    stats = json.loads((tmp_path / "chaos" / "_stats.json").read_text())
    assert stats["this_run"]["actor_deaths"] >= KILLS
    assert stats["this_run"]["shard_attempts_failed"] >= KILLS
    assert stats["failed_shards"] == {} and stats["totals"]["ok"] == 16

    assert run_tokenize(cfg(tmp_path / "clean")) == 0
    chaos_files = {p.name: p.read_bytes() for p in (tmp_path / "chaos" / "tokens").glob("*.parquet")}
    clean_files = {p.name: p.read_bytes() for p in (tmp_path / "clean" / "tokens").glob("*.parquet")}
    assert len(clean_files) == 4 and chaos_files == clean_files
    assert not list((tmp_path / "chaos" / "_tmp").iterdir())
    report = verify_output(str(tmp_path / "chaos"), [pattern])
    assert report.clean, report.format()
