"""The tokenize job on the driver: plan shards, guard the output, skip committed shards, run the
actor pool, write OUT/_stats.json, print the summary. Exit code 0 only when every shard committed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from pipeline.config import save_config
from pipeline.runner.build import plan_job
from pipeline.runner.config import JobSpec, TokenizeConfig
from pipeline.runner.progress import ImageCounter, ProgressBar, format_summary
from pipeline.runner.scheduler import ScheduleOutcome, ShardScheduler
from pipeline.runner.stats import build_stats
from pipeline.sinks.manifest import read_all_manifests
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.listing import expand_shards

PROGRESS_POLL_S = 0.5  # how often the driver asks the image counter (not once per shard)
# Manifests are json.dumps(indent=1, sort_keys=True): a top-level key sits after a newline and one space.
TOP_LEVEL_FINGERPRINT = b'\n "fingerprint": "'


class OutputConflict(RuntimeError):
    """The output directory holds tokens of a different tokenizer/config."""


def log(message: str) -> None:
    print(f"[scaletok tokenize] {message}", flush=True)


def prepare_output(layout: OutputLayout, spec: JobSpec, cfg: TokenizeConfig) -> None:
    """Refuse to mix two jobs' tokens in one directory unless --overwrite (which clears it)."""
    job_path = layout.join("_job.json")
    previous = json.loads(layout.read_bytes(job_path)) if layout.exists(job_path) else None
    foreign = previous is not None and previous.get("fingerprint") != spec.fingerprint
    if not foreign and previous is None:
        foreign = any(fp != spec.fingerprint for fp in manifest_fingerprints(layout).values())
    if foreign and not cfg.overwrite:
        old = (previous or {}).get("settings", {})
        diff = sorted(k for k in set(old) | set(spec.token_settings())
                      if old.get(k) != spec.token_settings().get(k)) if old else []
        raise OutputConflict(
            f"{layout.url} already holds tokens from a different tokenizer/config "
            f"(fingerprint {(previous or {}).get('fingerprint', '?')} vs {spec.fingerprint} for this job"
            + (f"; differing settings: {', '.join(diff)}" if diff else "")
            + "). Use another --output, or pass --overwrite to delete them and start over.")
    if cfg.overwrite:
        for path in (layout.tokens_dir, layout.manifest_dir, layout.tmp_dir):
            layout.remove(path, recursive=True)
        for name in ("_job.json", "_stats.json"):
            layout.remove(layout.join(name))
    layout.makedirs()
    record = {"fingerprint": spec.fingerprint, "tokenizer_fingerprint": spec.tokenizer_fingerprint,
              "tokenizer": spec.tokenizer, "settings": spec.token_settings()}
    layout.put(job_path, json.dumps(record, indent=1, sort_keys=True, default=str).encode())
    if layout.is_local:
        save_config(cfg, layout.join("config.yaml"))
    else:
        save_config(cfg, layout.join("config.yaml"), fs=layout.fs)


def connect_ray(address: str | None) -> bool:
    """Join `address` (or RAY_ADDRESS), reuse an initialised Ray, or start a local one.
    Returns True when this call started the connection (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address or None, logging_level="WARNING")
    return True


def pool_size(cfg: TokenizeConfig, num_shards: int) -> tuple[int, float]:
    """(number of actors, GPUs per actor) from the flags and the cluster's resources."""
    import ray

    total = ray.cluster_resources()
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    fits = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cfg.cpus_per_actor
            and n["Resources"].get("GPU", 0) >= gpus]
    if not fits:
        raise RuntimeError(f"no node of the cluster can hold an actor with {cfg.cpus_per_actor} CPUs and "
                           f"{gpus} GPUs (cluster: {dict(total)}); lower --cpus-per-actor/--gpus-per-actor")
    if cfg.gpu_decode and gpus <= 0:
        raise ValueError(f"--gpu-decode needs GPU actors, and the cluster has no GPUs ({dict(total)}); "
                         f"drop the flag to decode on the CPU")
    if cfg.num_actors:
        n = cfg.num_actors
    elif gpus > 0:
        n = int(total.get("GPU", 0) // gpus)
    else:
        n = int(total.get("CPU", 1) // max(cfg.cpus_per_actor, 1e-3))
    return max(1, min(n, num_shards)), gpus


def manifest_fingerprints(layout: OutputLayout, names: Iterable[str] | None = None) -> dict[str, str | None]:
    """shard name -> the job fingerprint in its manifest (None: unreadable), for every manifest in
    the output, or only those of `names`. One listing of the manifest directory, then only the
    fingerprint of each manifest (its codebook histogram is most of its bytes) read concurrently:
    planning a resume over 100 000 committed shards takes seconds, not minutes."""
    paths = layout.list_dir(layout.manifest_dir, ".json")
    by_name = {p.rstrip("/").rsplit("/", 1)[-1][: -len(".json")]: p for p in paths}
    if names is not None:
        wanted = set(names)
        by_name = {n: p for n, p in by_name.items() if n in wanted}
    if not by_name:
        return {}
    if layout.is_local:
        # Chunks of paths per task: a future per file would cost more than reading it.
        paths = list(by_name.values())
        chunks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]
        with ThreadPoolExecutor(min(8, len(chunks), 2 * (os.cpu_count() or 1))) as pool:
            read = [fp for chunk in pool.map(_local_fingerprints, chunks) for fp in chunk]
        found = dict(zip(by_name, read))
    else:
        contents = layout.fs.cat(list(by_name.values()), on_error="return")
        found = {n: _fingerprint_of(contents.get(p)) for n, p in by_name.items()}
    return found


def _local_fingerprints(paths: list[str]) -> list[str | None]:
    out = []
    for path in paths:
        try:  # os-level reads: half the cost of open().read() for small files
            fd = os.open(path, os.O_RDONLY)
            try:
                parts = [os.read(fd, 1 << 16)]
                while len(parts[-1]) == 1 << 16:
                    parts.append(os.read(fd, 1 << 16))
            finally:
                os.close(fd)
            out.append(_fingerprint_of(b"".join(parts) if len(parts) > 1 else parts[0]))
        except OSError:
            out.append(None)
    return out


def _fingerprint_of(raw: Any) -> str | None:
    if not isinstance(raw, (bytes, bytearray)):
        return None  # a read error returned by fs.cat
    at = raw.find(TOP_LEVEL_FINGERPRINT)
    if at >= 0 and raw[-64:].rstrip().endswith(b"\n}"):  # whole: the top-level object's own closing brace
        start = at + len(TOP_LEVEL_FINGERPRINT)
        end = raw.find(b'"', start)
        if end > start:
            return raw[start:end].decode("ascii", errors="replace")
    try:  # written some other way: parse it all
        value = json.loads(raw).get("fingerprint")
        return value if isinstance(value, str) else None
    except (ValueError, AttributeError):
        return None


def plan_resume(layout: OutputLayout, shards: list, fingerprint: str) -> list:
    """The shards still to do: a shard is done iff its manifest exists with the job's fingerprint."""
    done = manifest_fingerprints(layout, [s.name for s in shards])
    return [s for s in shards if done.get(s.name) != fingerprint]


def run_tokenize(cfg: TokenizeConfig, on_scheduler: Callable[[ShardScheduler], None] | None = None) -> int:
    start = time.perf_counter()
    shards = expand_shards(cfg.input, cfg.storage_options)
    spec, _ = plan_job(cfg)
    layout = OutputLayout(cfg.output, cfg.storage_options)
    prepare_output(layout, spec, cfg)
    todo = plan_resume(layout, shards, spec.fingerprint)
    log(f"{len(shards)} shards, {len(shards) - len(todo)} already committed, {len(todo)} to do; "
        f"tokenizer {spec.tokenizer} fingerprint {spec.fingerprint}; output {cfg.output}")
    outcome = ScheduleOutcome()
    if todo:
        outcome = _run_pool(cfg, spec, todo, on_scheduler)
    layout.clean_tmp()
    manifests = read_all_manifests(layout)
    stats = build_stats(shards, manifests, spec.fingerprint, outcome, time.perf_counter() - start,
                        skipped=len(shards) - len(todo))
    layout.put(layout.join("_stats.json"), json.dumps(stats, indent=1, sort_keys=True).encode())
    print(format_summary(stats), flush=True)
    missing = stats["failed_shards"] or stats["missing_shards"]
    return 1 if missing else 0


def _run_pool(cfg: TokenizeConfig, spec: JobSpec, todo: list, on_scheduler) -> ScheduleOutcome:
    import ray

    started = connect_ray(cfg.address)
    try:
        num_actors, gpus = pool_size(cfg, len(todo))
        batch = f"auto (<= {spec.max_batch_size}, measured per actor)" if spec.auto_batch else spec.batch_size
        log(f"{num_actors} actors x ({cfg.cpus_per_actor} CPU, {gpus} GPU), batch {batch}, "
            f"{cfg.shards_per_actor} shards in flight per actor")
        counter = ray.remote(num_cpus=0)(ImageCounter).remote()
        bar = ProgressBar(len(todo), enabled=cfg.progress)
        seen = {"done": 0, "polled": 0.0, "images": None}

        def on_progress(done: int, failed: int) -> None:
            now = time.perf_counter()
            if now - seen["polled"] >= PROGRESS_POLL_S:  # a round trip to the counter actor
                seen["images"], seen["polled"] = _poll(counter), now
            bar.update(done - seen["done"], images=seen["images"], failed=failed)
            seen["done"] = done

        scheduler = ShardScheduler(spec, todo, num_actors=num_actors, gpus_per_actor=gpus,
                                   cpus_per_actor=cfg.cpus_per_actor, max_retries=cfg.max_shard_retries,
                                   reporter=counter, on_progress=on_progress, startup_wait_s=cfg.startup_wait_s,
                                   actor_start_timeout_s=cfg.actor_start_timeout_s,
                                   shards_per_actor=cfg.shards_per_actor)
        if on_scheduler is not None:
            on_scheduler(scheduler)
        try:
            return scheduler.run()
        finally:
            bar.close()
            ray.kill(counter)
    finally:
        if started:
            ray.shutdown()


def _poll(counter: Any) -> int | None:
    import ray

    try:
        return int(ray.get(counter.total.remote(), timeout=2))
    except Exception:
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `scaletok tokenize` or `python -m jobs.tokenize`")
