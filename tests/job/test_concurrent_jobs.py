"""Exactly once in the field, with real Ray and real processes: two jobs started at once on one
output (reproducible bytes, and bytes that differ on every attempt), a hung actor turned into a
retry by --shard-timeout-s, and the job record of reruns."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.runner.job import run_tokenize
from pipeline.runner.verify import verify_output
from tests.job.conftest import TINY_MODULE, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def start_job(pattern: str, out: Path, tok_config: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.tokenize", "--input", pattern, "--output", str(out), "--tokenizer", "tiny-pool",
         "--tokenizer-module", TINY_MODULE, "--tokenizer-config", str(tok_config), "--num-actors", "1",
         "--cpus-per-actor", "0.5", "--batch-size", "2", "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def committed_once_and_consistent(out: Path, pattern: str) -> dict:
    manifests = {p.stem: json.loads(p.read_text()) for p in (out / "_manifest").glob("*.json")}
    assert sorted(manifests) == ["sample-000000", "sample-000001", "sample-000002"]
    for name, manifest in manifests.items():
        data = (out / "tokens" / f"{name}.parquet").read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"], name  # the file is the manifest's
    assert not list((out / "_attempts").iterdir())  # losers' attempt files are gone
    report = verify_output(str(out), [pattern])
    assert report.clean, report.format()
    return manifests


def run_two_at_once(corpus_pattern: str, out: Path, tmp_path: Path, tok_settings: dict) -> list[dict]:
    tok_config = tmp_path / "tok.json"
    tok_config.write_text(json.dumps(tok_settings))
    jobs = [start_job(corpus_pattern, out, tok_config) for _ in range(2)]
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], "\n".join(outputs)
    return json.loads((out / "_stats.json").read_text())["runs"]


def test_two_jobs_with_the_same_settings_at_once(corpus_pattern, tmp_path):
    out = tmp_path / "out"
    runs = run_two_at_once(corpus_pattern, out, tmp_path, {"delay": 1.0})
    committed_once_and_consistent(out, corpus_pattern)
    assert len(runs) == 2  # both runs are in the history
    assert all(run["shards_committed_by_other_bytes"] == [] for run in runs)


def test_two_jobs_whose_bytes_differ_commit_one_version_each(corpus_pattern, tmp_path):
    """Non-reproducible encodings (bf16 on mixed GPUs): both jobs exit 0, every shard has exactly
    one committed version, and the attempts that lost to other bytes are reported, not failed."""
    out = tmp_path / "out"
    runs = run_two_at_once(corpus_pattern, out, tmp_path, {"delay": 2.0, "jitter": True})
    committed_once_and_consistent(out, corpus_pattern)
    lost = [name for run in runs for name in run["shards_committed_by_other_bytes"]]
    worked = sum(run["shards_committed"] for run in runs)
    # Every shard one attempt beyond the first (both jobs planned all 3 before either committed)
    # lost to other bytes: with jitter no two attempts agree.
    assert len(lost) == worked - 3 and len(set(lost)) == len(lost)


def test_a_hung_actor_becomes_a_retry(ray_cluster, corpus_dir, tmp_path):
    shard = str(corpus_dir / "sample-000000.tar")
    tok_config = tmp_path / "tok.json"
    tok_config.write_text(json.dumps({"hang_once": str(tmp_path / "hung-once")}))
    cfg = tiny_config([shard], tmp_path / "out", num_actors=1, shard_timeout_s=5, max_shard_retries=1,
                      tokenizer_config=str(tok_config))
    start = time.perf_counter()
    assert run_tokenize(cfg) == 0
    assert time.perf_counter() - start < 120  # not the 600 s the first attempt hangs for
    stats = json.loads((tmp_path / "out" / "_stats.json").read_text())["this_run"]
    assert stats["shard_timeouts"] == 1 and stats["actor_deaths"] >= 1 and stats["shards_committed"] == 1


def test_a_rerun_keeps_the_record_of_the_run_that_did_the_work(ray_cluster, corpus_pattern, tmp_path):
    out = tmp_path / "out"
    assert run_tokenize(tiny_config([corpus_pattern], out, num_actors=1)) == 0
    records = {name: (out / name).read_bytes() for name in ("_job.json", "config.yaml", "_inputs.json")}
    mtimes = {name: (out / name).stat().st_mtime_ns for name in records}
    first = json.loads((out / "_stats.json").read_text())
    assert first["last_working_run"]["shards_committed"] == 3
    assert run_tokenize(tiny_config([corpus_pattern], out, num_actors=1)) == 0
    stats = json.loads((out / "_stats.json").read_text())
    assert [r["did_work"] for r in stats["runs"]] == [True, False]
    assert "nothing to do" in stats["runs"][-1]["note"]
    assert stats["last_working_run"] == first["last_working_run"]  # what the report shows
    assert stats["this_run"]["shards_committed"] == 0
    assert {name: (out / name).stat().st_mtime_ns for name in records} == mtimes  # not rewritten
    assert {name: (out / name).read_bytes() for name in records} == records
