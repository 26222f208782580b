"""The tokenize job on the driver: check inputs and output, plan shards, claim the output, skip
committed shards, repair half-published ones, run the actor pool, clean up this run's leftovers,
write OUT/_stats.json, print the summary. Exit code 0 only when every shard is committed.

Order matters for the operator: nothing is written and Ray is not started before every input
exists and the output is writable (runner/preflight.py).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any, Callable

from pipeline.errors import one_line
from pipeline.ray_connect import init_ray
from pipeline.runner.build import plan_job
from pipeline.runner.config import JobSpec, TokenizeConfig
from pipeline.runner.output import (CLASSES_RECORD, OutputConflict, claim_output, record_run_config,  # noqa: F401
                                    record_stats, write_if_changed)
from pipeline.runner.preflight import check_inputs, check_output
from pipeline.runner.progress import ImageCounter, ProgressBar, format_summary, plural
from pipeline.runner.scheduler import ScheduleOutcome, ShardScheduler
from pipeline.runner.stats import build_stats
from pipeline.secrets import redact_url
from pipeline.sinks.manifest import data_sizes, iter_manifests
from pipeline.sinks.resume import clean_attempts, plan_resume, restore_data
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.inputs import plan_inputs

PROGRESS_POLL_S = 0.5  # how often the driver asks the image counter (not once per shard)


def log(message: str) -> None:
    print(f"[scaletok tokenize] {message}", flush=True)


def connect_ray(address: str | None) -> bool:
    """Join `address` (or RAY_ADDRESS), reuse an initialised Ray, or start a local one (never an
    existing Ray of this machine that nobody named). True when this call connected."""
    return init_ray(address, logging_level="WARNING")


def prepare_output(layout: OutputLayout, spec: JobSpec, cfg: TokenizeConfig, shard_names: list[str] | None = None) -> None:
    """Claim the output for this job (refusing another job's unless --overwrite) and record the
    run's config and inputs."""
    claim_output(layout, spec, cfg.overwrite)
    record_run_config(layout, cfg, list(shard_names or []))


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


def run_tokenize(cfg: TokenizeConfig, on_scheduler: Callable[[ShardScheduler], None] | None = None) -> int:
    start = time.perf_counter()
    cfg.validate()
    inputs = plan_inputs(cfg.input, cfg.storage_options, images_per_shard=cfg.images_per_shard,
                         image_column=cfg.image_column, label_column=cfg.label_column, key_column=cfg.key_column)
    shards = inputs.shards
    if inputs.layout != "folder":  # a folder's listing already proves its files exist
        check_inputs(shards, cfg.storage_options)
    log(f"input: {inputs.describe()}")
    spec, _ = plan_job(cfg, inputs)
    spec = spec.replace(run_id=new_run_id())
    layout = OutputLayout(cfg.output, cfg.storage_options, run_id=spec.run_id,
                          allow_unconditional=cfg.allow_unconditional_commit)
    check_output(layout, cfg.storage_options, cfg.allow_unconditional_commit)
    prepare_output(layout, spec, cfg, [s.name for s in shards])
    if spec.class_names:
        write_if_changed(layout, CLASSES_RECORD, json.dumps({"classes": list(spec.class_names)}, indent=0).encode())
    plan = plan_resume(layout, shards, spec.fingerprint, cfg.check_data)
    restored, redo = restore_data(layout, sorted(plan.damaged)) if plan.damaged else ([], [])
    redo_names = set(redo)
    todo = plan.todo + [s for s in shards if s.name in redo_names]
    log(f"{plural(len(shards), 'shard')}: {plan.done + len(restored)} already committed, {len(todo)} to do"
        + _damage_note(plan.damaged, restored, redo, plan.hashed)
        + f"; tokenizer {spec.tokenizer} (tokenizer fingerprint {spec.tokenizer_fingerprint}), "
          f"job fingerprint {spec.fingerprint}; output {redact_url(cfg.output)}")
    outcome = ScheduleOutcome()
    if todo:
        outcome = _run_pool(cfg, spec, todo, on_scheduler)
    cleaned = clean_attempts(layout, spec.fingerprint) + layout.clean_tmp()
    # The tally checks the store: a shard counts as committed only with its data file in place.
    stats = build_stats(shards, iter_manifests(layout), spec.fingerprint, outcome, time.perf_counter() - start,
                        skipped=plan.done, repaired=len(restored), cleaned=cleaned, data_sizes=data_sizes(layout),
                        redone=[n for n in redo if n in outcome.results])
    try:
        stats = record_stats(layout, stats, spec.run_id)
    except Exception as e:  # noqa: BLE001 -- a full disk or a failing store must not cost the summary
        print(format_summary(stats), flush=True)
        log(f"could not record this run in {redact_url(cfg.output)}: {one_line(e)}")
        return 1
    print(format_summary(stats), flush=True)
    return 1 if stats["failed_shards"] or stats["missing_shards"] else 0


def _damage_note(damaged: dict[str, str], restored: list[str], redo: list[str], hashed: bool) -> str:
    """The plan line's account of committed shards whose data file was missing or damaged."""
    if not damaged:
        return "" if not hashed else ", every committed data file checked by sha256"
    examples = "; ".join(f"{n}: {why}" for n, why in sorted(damaged.items())[:3])
    return (f"; {plural(len(damaged), 'committed shard')} with a missing or damaged data file ({examples}"
            f"{'; ...' if len(damaged) > 3 else ''}): {len(restored)} restored from attempt files, "
            f"{len(redo)} to encode again")


def new_run_id() -> str:
    """Names this run's temp and attempt files: time-ordered, unique across concurrent jobs."""
    return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}{uuid.uuid4().hex[:6]}"


def _run_pool(cfg: TokenizeConfig, spec: JobSpec, todo: list, on_scheduler) -> ScheduleOutcome:
    import ray

    started = connect_ray(cfg.address)
    try:
        num_actors, gpus = pool_size(cfg, len(todo))
        batch = f"auto (<= {spec.max_batch_size}, measured per actor)" if spec.auto_batch else spec.batch_size
        log(f"{plural(num_actors, 'actor')} x ({cfg.cpus_per_actor:g} CPU, {gpus:g} GPU), batch {batch}, "
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

        # The actors get the storage options through Ray's object store, never in their arguments.
        scheduler = ShardScheduler(spec.for_ray(), todo, num_actors=num_actors, gpus_per_actor=gpus,
                                   cpus_per_actor=cfg.cpus_per_actor, max_retries=cfg.max_shard_retries,
                                   reporter=counter, on_progress=on_progress, startup_wait_s=cfg.startup_wait_s,
                                   actor_start_timeout_s=cfg.actor_start_timeout_s,
                                   shards_per_actor=cfg.shards_per_actor, shard_timeout_s=cfg.shard_timeout_s)
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
