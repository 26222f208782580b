"""The job-level records of an output directory, beside the per-shard manifests:

  OUT/_job.json      which job owns the directory: job fingerprint, tokenizer fingerprint, token
                     settings and how to rebuild the tokenizer. Created exclusively, never
                     rewritten: two different jobs starting at once on an empty output cannot
                     both own it, and a rerun of the same job leaves it as it was.
  OUT/_inputs.json   the shard names of the latest run's input (readers ignore committed shards
                     that are no longer in it); rewritten only when the input changed.
  OUT/config.yaml    the latest run's TokenizeConfig (secrets masked); rewritten only when changed.
  OUT/classes.json   the class names of a class-folder or ClassLabel input (label i = classes[i]).
  OUT/_stats.json    totals over the committed set, and the history of runs: every run adds an
                     entry (a rerun that found nothing to do says so), and `last_working_run` is the
                     last run that committed shards (what the report shows).
  OUT/_runs/         one record per run (`<finished at>-<run id>.json`), the history's source:
                     two jobs finishing at once each keep their entry.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import yaml

from pipeline.config import recorded_dict
from pipeline.runner.config import JobSpec, TokenizeConfig
from pipeline.sinks.manifest import INPUTS_RECORD, JOB_RECORD
from pipeline.sinks.resume import manifest_fingerprints
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.folders import DEFAULT_IMAGES_PER_SHARD
from pipeline.sources.inputs import InputPlan, plan_inputs

STATS_RECORD = "_stats.json"
RUNS_DIR = "_runs"                  # one record per run: _stats.json's history is built from them
CLASSES_RECORD = "classes.json"     # {"classes": [...]}: label i is classes[i] (class-folder / ClassLabel inputs)
CONFIG_RECORD = "config.yaml"
MAX_RUNS_KEPT = 200


class OutputConflict(RuntimeError):
    """The output directory holds tokens of a different tokenizer/config."""


def job_record(spec: JobSpec) -> dict[str, Any]:
    return {"fingerprint": spec.fingerprint, "job_fingerprint": spec.fingerprint,
            "tokenizer_fingerprint": spec.tokenizer_fingerprint, "tokenizer": spec.tokenizer,
            "settings": spec.token_settings(),
            # How to rebuild the tokenizer (`scaletok verify --reencode`); paths as the job saw them.
            "rebuild": {"checkpoint": spec.checkpoint, "tokenizer_config": spec.tokenizer_config,
                        "tokenizer_module": spec.tokenizer_module, "preprocess": spec.preprocess,
                        "precision": spec.precision, "patch_nums": list(spec.patch_nums),
                        "tile_size": spec.tile_size, "overlap": spec.overlap,
                        "variants": list(spec.variants), "max_image_pixels": spec.max_image_pixels,
                        "max_member_bytes": spec.max_member_bytes, "jpeg_draft": spec.jpeg_draft,
                        "latent_dtype": spec.metadata.get("latent_dtype"),
                        "parquet_columns": spec.parquet_columns, "variants_seed": spec.seed,
                        "images_per_shard": spec.images_per_shard}}


def replan_inputs(record: dict[str, Any], inputs: list[str], storage_options: dict[str, Any] | None) -> InputPlan:
    """`inputs` planned as the job of `record` (its _job.json) planned them: the same images per
    virtual shard and Parquet columns, so shard names and keys match the output's."""
    rebuild = record.get("rebuild") or {}
    columns = rebuild.get("parquet_columns") or {}
    return plan_inputs(list(inputs), storage_options,
                       images_per_shard=int(rebuild.get("images_per_shard") or DEFAULT_IMAGES_PER_SHARD),
                       image_column=columns.get("image"), label_column=columns.get("label"),
                       key_column=columns.get("key"))


def _read_json(layout: OutputLayout, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(layout.read_bytes(layout.join(name)))
    except FileNotFoundError:
        return None


def _conflict(layout: OutputLayout, spec: JobSpec, previous: dict[str, Any]) -> OutputConflict:
    old = previous.get("settings", {})
    new = spec.token_settings()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) if old else []
    return OutputConflict(
        f"{layout.url} already holds tokens of another job (job fingerprint {previous.get('fingerprint', '?')}, "
        f"this job's {spec.fingerprint}" + (f"; differing settings: {', '.join(diff)}" if diff else "")
        + "). Use another --output, or pass --overwrite to delete them and start over.")


def claim_output(layout: OutputLayout, spec: JobSpec, overwrite: bool) -> bool:
    """Make this job the owner of the output (or find it already is). Returns True when this call
    created _job.json. Refuses another job's output unless `overwrite` (which clears it first)."""
    previous = _read_json(layout, JOB_RECORD)
    foreign = previous is not None and previous.get("fingerprint") != spec.fingerprint
    if previous is None:  # an output from before _job.json, or a half-cleared one
        foreign = any(fp != spec.fingerprint for fp in manifest_fingerprints(layout).values())
    if foreign and not overwrite:
        raise _conflict(layout, spec, previous or {})
    if overwrite:
        for path in (layout.tokens_dir, layout.manifest_dir, layout.attempt_dir, layout.tmp_dir):
            layout.remove(path, recursive=True)
        for name in (JOB_RECORD, STATS_RECORD, INPUTS_RECORD):
            layout.remove(layout.join(name))
        layout.remove(layout.join(RUNS_DIR), recursive=True)
        previous = None
    layout.makedirs()
    if previous is not None:
        return False
    text = json.dumps(job_record(spec), indent=1, sort_keys=True, default=str).encode()
    if layout.create_if_absent(layout.join(JOB_RECORD), text):
        return True
    winner = _read_json(layout, JOB_RECORD) or {}  # another job created it first, just now
    if winner.get("fingerprint") != spec.fingerprint:
        raise _conflict(layout, spec, winner)
    return False


def write_if_changed(layout: OutputLayout, name: str, data: bytes) -> bool:
    """Rewrite OUT/<name> only when its content differs (a rerun leaves the record of the run as it was)."""
    try:
        if layout.read_bytes(layout.join(name)) == data:
            return False
    except FileNotFoundError:
        pass
    layout.put(layout.join(name), data)
    return True


def record_run_config(layout: OutputLayout, cfg: TokenizeConfig, shard_names: list[str]) -> None:
    """config.yaml and _inputs.json, each written only when it changed."""
    config_text = yaml.safe_dump({"kind": type(cfg).__name__, **recorded_dict(cfg)}, sort_keys=False).encode()
    write_if_changed(layout, CONFIG_RECORD, config_text)
    write_if_changed(layout, INPUTS_RECORD, json.dumps({"shards": shard_names}, indent=0).encode())


def record_stats(layout: OutputLayout, stats: dict[str, Any], run_id: str = "") -> dict[str, Any]:
    """Record this run in OUT/_runs/ (one file per run, so concurrent jobs never lose each other's
    entry) and write _stats.json with the history; returns what was written.
    `stats["this_run"]` is this invocation; `last_working_run` the last one that committed shards."""
    run = dict(stats["this_run"])
    run["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    run["run_id"] = run_id
    run["did_work"] = bool(run.get("shards_committed") or run.get("shards_repaired"))
    if not run["did_work"]:
        run["note"] = "nothing to do: every input shard was already committed" if not stats.get("missing_shards") \
            and not stats.get("failed_shards") else "no shard was committed in this run"
    name = f"{run['finished_at'].replace(':', '')}-{run_id or 'run'}.json"
    layout.put(layout.join(RUNS_DIR, name), json.dumps(run, indent=1, sort_keys=True).encode())
    seen: list[str] | None = None
    while True:  # rewrite while another job's run appeared in between (their entries are never lost)
        names = [p.rsplit("/", 1)[-1] for p in layout.list_dir(layout.join(RUNS_DIR), ".json")]
        if names == seen:
            return stats
        seen = names
        history = [_read_json(layout, f"{RUNS_DIR}/{n}") for n in names[-MAX_RUNS_KEPT:]]
        history = [r for r in history if isinstance(r, dict)]
        working = [r for r in history if r.get("did_work")]
        stats = dict(stats, this_run=run, runs=history, last_working_run=working[-1] if working else None)
        layout.put(layout.join(STATS_RECORD), json.dumps(stats, indent=1, sort_keys=True).encode())
