"""Fit a VAR on stored tokens with Ray Train (`TorchTrainer`), resumable and fault tolerant.

Driver (`fit`): opens the committed token files, checks them against the tokenizer, fixes the
data plan (pipeline/var/data_plan.py: each rank's share of the images, the epoch length) and the
number of steps, starts a TorchTrainer and plots the curves at the end.
Workers (pipeline/var/train_worker.py): load their share of the token rows into memory, rebuild
the teacher-forcing input from the stored indices with the tokenizer's codebook and phi convs (no
encoder forward), run the reference recipe under DDP and report a checkpoint every `ckpt_every`
steps. Every rank takes the same number of rows every step. Rerunning with the same
storage_path/name resumes from the latest checkpoint at exactly the batch where it stopped; a dead
worker restarts the group from it (FailureConfig).

Bad data is not retried. A damaged token file (its bytes differ from its manifest: a truncated one
is found by the driver's size check before any worker starts, a changed one by the sha256 check of
the worker that reads it) and a TokenDataError on a worker fail the run at once
(training/run_config.py: FinalErrors): `fit` raises the worker's own exception, a damaged file as
JobFailed, so the CLI prints `scaletok train: failed: <file>: damaged: ...` and exits 1.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import asdict, dataclass, replace
from typing import Any

from pipeline.config import to_ray_dict
from pipeline.errors import JobFailed
from pipeline.io import filesystem_for
from pipeline.ray_connect import init_ray
from pipeline.sinks.integrity import DamagedDataError, integrity_record
from pipeline.tokenizers import TokenizerMismatch, tokenizer_from_metadata
from pipeline.training.console import say
from pipeline.training.run_config import checkpoint_dirs, final_error_of, ray_run_config
from pipeline.var.checkpointing import METRICS_FILE, read_jsonl
from pipeline.var.data import TokenDataError, check_labels, check_tokenizer, classes_of, open_token_source
from pipeline.var.data_plan import make_plan, split_images
from pipeline.var.metrics import plot_curves
from pipeline.var.model import VARConfig
from pipeline.var.token_share import rows_per_image
from pipeline.var.train_config import TrainConfig
from pipeline.var.train_worker import FAULT_MARKER, storage_fs, train_loop_per_worker

__all__ = ["FAULT_MARKER", "FitResult", "fit", "latest_checkpoint", "storage_fs", "train_loop_per_worker"]
log = logging.getLogger(__name__)

# Worker errors that every attempt would meet again: the run fails at once (module doc).
FINAL_ERRORS = (DamagedDataError, TokenDataError)


@dataclass
class FitResult:
    run_dir: str                    # <storage_path>/<name>
    max_steps: int
    final_step: int | None
    checkpoint: str | None          # path of the latest checkpoint (in the storage filesystem)
    metrics: dict[str, Any] | None  # last reported metrics
    history: list[dict[str, Any]]   # every logged step


def tokenizer_spec(cfg: TrainConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """How to rebuild the tokenizer that wrote the tokens: name and constructor config default to
    the Parquet metadata; preprocessing and precision always come from it (they are part of the
    fingerprint, though the teacher-forcing input does not depend on them)."""
    name = cfg.tokenizer or meta.get("tokenizer")
    if not name:
        raise ValueError("the token files do not name their tokenizer; pass --tokenizer")
    options: dict[str, Any] = {}
    if isinstance(meta.get("preprocess"), dict):
        options["preprocess"] = meta["preprocess"]
    if meta.get("precision"):
        options["precision"] = meta["precision"]
    config = cfg.tokenizer_config or meta.get("tokenizer_config") or None
    return {"name": name, "checkpoint": cfg.tokenizer_checkpoint, "config": config, "options": options}


# ------------------------------------------------------------------------------------------- driver
def with_data_classes(cfg: TrainConfig, source: Any) -> TrainConfig:
    """The model's class count from the data unless --var-config num_classes says otherwise
    (VAR itself hard-codes ImageNet's 1000); says which and why."""
    if "num_classes" in cfg.var_config:
        say(f"classes: {cfg.var_config['num_classes']} (--var-config num_classes)")
        return cfg
    count, _, why = classes_of(source)
    if count is None:
        say(f"classes: {VARConfig.num_classes} (the model's default; {why}: every row trains as the null class)")
        return cfg
    say(f"classes: {why}")
    return replace(cfg, var_config={**cfg.var_config, "num_classes": int(count)})


def fit(cfg: TrainConfig) -> FitResult:
    """Train (or resume) the run of `cfg`. A damaged token file, met by the driver or a worker,
    leaves as JobFailed whose one-line message names the file."""
    try:
        return _fit(cfg)
    except DamagedDataError as e:
        # A ValueError, but not the user's input to fix: the job ran and met changed data (exit 1).
        raise JobFailed(str(e)) from e


def _fit(cfg: TrainConfig) -> FitResult:
    cfg = cfg.resolved()
    cfg.validate()
    source = open_token_source(cfg.tokens, cfg.storage_options)
    if source.ignored:
        say(f"token data: {source.ignored}")
    tok_spec = tokenizer_spec(cfg, source.metadata)
    try:
        tok = tokenizer_from_metadata(source.metadata, cfg.tokenizer_checkpoint, name=tok_spec["name"],
                                      config=tok_spec["config"])
    except TokenizerMismatch as e:
        raise TokenDataError(f"{', '.join(cfg.tokens)} was not produced by the tokenizer given to the trainer: {e}") from e
    check_tokenizer(source.metadata, tok, source=", ".join(cfg.tokens))
    cfg = with_data_classes(cfg, source)
    num_classes = int(cfg.var_config.get("num_classes", VARConfig.num_classes))
    check_labels(source, num_classes)
    rows = rows_per_image(source)
    plan = make_plan(source.files, rows, seed=cfg.seed, world=cfg.num_workers, per_rank_batch=cfg.per_worker_batch,
                     all_variants=cfg.all_variants)
    if plan.steps_per_epoch < 1:
        raise ValueError(f"{', '.join(cfg.tokens)}: too few usable {'rows' if cfg.all_variants else 'images'} "
                         f"({sum(len(r) for r in rows)} images) for one full batch of {cfg.per_worker_batch} on "
                         f"each of {cfg.num_workers} workers")
    shares = split_images([len(r) for r in rows], cfg.num_workers)
    max_steps = cfg.max_steps or max(1, int(cfg.epochs * plan.steps_per_epoch))

    import ray
    import ray.data
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg.ray_address, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = cfg.progress_bars
    fs, run_dir = storage_fs(cfg)
    fs.makedirs(run_dir, exist_ok=True)
    from pipeline.config import save_config
    save_config(cfg, posixpath.join(run_dir, "train_config.yaml"), fs=fs)

    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_ray_dict(cfg), "max_steps": max_steps, "seq_len": source.seq_len,
                           "tokenizer": {**tok_spec, "fingerprint": tok.fingerprint()},
                           "patch_nums": list(source.patch_nums), "num_classes": num_classes,
                           "class_names": classes_of(source)[1],
                           "files": list(source.files), "metadata": source.metadata, "plan": asdict(plan),
                           # what each worker checks the files it reads against (size, sha256)
                           "integrity": [integrity_record(m) for m in source.manifests],
                           "shares": [[asdict(seg) for seg in share] for share in shares],
                           "share_rows": [sum(int(rows[g.file][g.first:g.end].sum()) for g in share)
                                          for share in shares]},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=ray_run_config(cfg.name, run_dir, fs, max_failures=cfg.max_failures,
                                  keep_checkpoints=cfg.keep_checkpoints, final_errors=FINAL_ERRORS),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 -- TrainingFailedError, or whatever Ray raises
        final = final_error_of(e, FINAL_ERRORS)
        if final is None:
            raise
        raise final from e  # the worker's own one-line error (Ray's, with tracebacks, under --debug)
    history = read_jsonl(posixpath.join(run_dir, METRICS_FILE), fs=fs)
    png = plot_curves(history, title=f"VAR d{cfg.depth} on {', '.join(cfg.tokens)}")
    if png:
        fs.pipe_file(posixpath.join(run_dir, "metrics.png"), png)
    ckpt = result.checkpoint
    return FitResult(run_dir=run_dir, max_steps=max_steps,
                     final_step=(result.metrics or {}).get("step", history[-1]["step"] if history else None),
                     checkpoint=ckpt.path if ckpt is not None else None, metrics=result.metrics, history=history)


def latest_checkpoint(cfg_or_run_dir: TrainConfig | str, storage_options: dict[str, Any] | None = None) -> str | None:
    """Newest checkpoint directory of a run (our names sort by step)."""
    if isinstance(cfg_or_run_dir, TrainConfig):
        fs, run_dir = storage_fs(cfg_or_run_dir)
    else:
        fs, run_dir = filesystem_for(cfg_or_run_dir, storage_options)
    if not fs.exists(run_dir):
        return None
    dirs = checkpoint_dirs(fs, run_dir)
    return dirs[-1] if dirs else None
