"""Fit a VAR on stored tokens with Ray Train (`TorchTrainer`), resumable and fault tolerant.

Driver (`fit`): opens the token Parquet, checks it against the tokenizer, fixes the number of
steps, hands `ray.data.read_parquet` to a TorchTrainer and plots the curves at the end.
Workers (`train_loop_per_worker`): rebuild the teacher-forcing input from the stored indices
with the tokenizer's codebook and phi convs (no encoder forward), run the reference recipe
under DDP and report a checkpoint every `ckpt_every` steps. Every worker runs exactly
`max_steps` steps (epochs repeat the shard; batches are full), so DDP never waits on a worker
that ran out of data. Rerunning with the same storage_path/name resumes from the latest
checkpoint; a dead worker restarts the group from it (FailureConfig).
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config import from_dict, recorded_dict, to_dict
from pipeline.ray_connect import init_ray
from pipeline.tokenizers import MultiScaleTokens, load_tokenizer
from pipeline.training.console import say
from pipeline.training.run_config import checkpoint_dir_name, checkpoint_dirs, ray_run_config
from pipeline.var.checkpointing import METRICS_FILE, load_checkpoint, read_jsonl, save_checkpoint, write_jsonl
from pipeline.var.data import check_tokenizer, count_ok_rows, make_collate, open_token_source, token_dataset
from pipeline.var.loading import load_var
from pipeline.var.metrics import plot_curves, step_row
from pipeline.var.model import scale_begin_ends
from pipeline.var.recipe import apply_schedule, param_groups, per_scale_stats, token_loss
from pipeline.var.train_config import TrainConfig

log = logging.getLogger(__name__)
FAULT_MARKER = ".fault_injected"


@dataclass
class FitResult:
    run_dir: str                    # <storage_path>/<name>
    max_steps: int
    final_step: int | None
    checkpoint: str | None          # path of the latest checkpoint (in the storage filesystem)
    metrics: dict[str, Any] | None  # last reported metrics
    history: list[dict[str, Any]]   # every logged step


def storage_fs(cfg: TrainConfig):
    """(fsspec filesystem, run directory path) of the run's storage."""
    import fsspec

    path = cfg.storage_path
    if "://" not in path:
        path = os.path.abspath(path)
    fs, root = fsspec.core.url_to_fs(path, **(cfg.storage_options or {}))
    return fs, posixpath.join(root, cfg.name)


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


def build_tokenizer(spec: dict[str, Any], device: Any = "cpu"):
    return load_tokenizer(spec["name"], spec["checkpoint"], spec["config"], device=device, **spec["options"])


# ------------------------------------------------------------------------------------------- driver
def fit(cfg: TrainConfig) -> FitResult:
    cfg = cfg.resolved()
    cfg.validate()
    source = open_token_source(cfg.tokens, cfg.storage_options)
    tok_spec = tokenizer_spec(cfg, source.metadata)
    tok = build_tokenizer(tok_spec)
    check_tokenizer(source.metadata, tok, source=cfg.tokens)
    max_steps = cfg.max_steps or int(count_ok_rows(source) * cfg.epochs) // cfg.batch_size
    if max_steps < 1:
        raise ValueError(f"{cfg.tokens}: too few usable rows for one step of batch {cfg.batch_size}")

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
        train_loop_config={"config": to_dict(cfg), "max_steps": max_steps, "tokenizer": tok_spec,
                           "fingerprint": tok.fingerprint(), "seq_len": source.seq_len,
                           "patch_nums": list(source.patch_nums)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=ray_run_config(cfg.name, run_dir, fs, max_failures=cfg.max_failures,
                                  keep_checkpoints=cfg.keep_checkpoints),
        datasets={"train": token_dataset(source, shuffle_files=cfg.shuffle_files)},
    )
    result = trainer.fit()
    history = read_jsonl(posixpath.join(run_dir, METRICS_FILE), fs=fs)
    png = plot_curves(history, title=f"VAR d{cfg.depth} on {cfg.tokens}")
    if png:
        fs.pipe_file(posixpath.join(run_dir, "metrics.png"), png)
    ckpt = result.checkpoint
    return FitResult(run_dir=run_dir, max_steps=max_steps,
                     final_step=(result.metrics or {}).get("step", history[-1]["step"] if history else None),
                     checkpoint=ckpt.path if ckpt is not None else None, metrics=result.metrics, history=history)


# ------------------------------------------------------------------------------------------- worker
def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(TrainConfig, loop_config["config"])
    max_steps, seq_len = int(loop_config["max_steps"]), int(loop_config["seq_len"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed * 1000 + rank)  # class dropout / drop path differ per worker

    tok_spec = loop_config["tokenizer"]
    tok = build_tokenizer(tok_spec, device=device)
    if tok.fingerprint() != loop_config["fingerprint"]:
        raise RuntimeError("the tokenizer rebuilt on this worker differs from the driver's (checkpoint path "
                           "not visible on the worker?)")
    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            restored = load_checkpoint(d)
    init = {"init_adaln": cfg.init_adaln, "init_adaln_gamma": cfg.init_adaln_gamma, "init_head": cfg.init_head}
    weights = restored.model if restored is not None else cfg.var_checkpoint
    var_cfg = {"patch_nums": tuple(loop_config["patch_nums"]), **cfg.var_constructor()}
    model = load_var(weights, config=var_cfg, tokenizer=tok, seed=cfg.seed, init=init, device=device)
    model.train()
    raw = model
    optimizer = torch.optim.AdamW(param_groups(raw, cfg.twd), lr=cfg.lr, betas=tuple(cfg.betas))
    if restored is not None and restored.optimizer is not None:
        optimizer.load_state_dict(restored.optimizer)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})

    step = restored.step if restored is not None else 0
    history = list(restored.history) if restored is not None else []
    fs, run_dir = storage_fs(cfg)
    patch_nums = raw.patch_nums
    shapes = [(p, p) for p in patch_nums]
    begin_ends = scale_begin_ends(patch_nums)
    collate = make_collate(seq_len, null_label=raw.num_classes)
    shard = ray.train.get_dataset_shard("train")
    use_bf16 = cfg.bf16 and device.type == "cuda"
    state = {"max_steps": max_steps, "var_config": raw.config.to_dict(), "train_config": recorded_dict(cfg),
             "tokenizer": {**tok_spec, "fingerprint": tok.fingerprint()}}
    if rank == 0:
        say(f"[train] world={world} device={device} steps {step}->{max_steps} "
            f"params={raw.num_params():,} batch={cfg.per_worker_batch}x{world} lr={cfg.lr:.3g}")

    while step < max_steps:
        batches_this_epoch = 0
        for batch in shard.iter_torch_batches(batch_size=cfg.per_worker_batch, collate_fn=collate,
                                              drop_last=True, prefetch_batches=1):
            if step >= max_steps:
                break
            batches_this_epoch += 1
            _maybe_inject_failure(cfg, step, rank, world, fs, run_dir)
            t0 = time.perf_counter()
            target = batch["tokens"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            if int(labels.max()) > raw.num_classes or int(labels.min()) < 0:
                raise ValueError(f"labels must lie in [0, {raw.num_classes}], got {int(labels.min())}..{int(labels.max())}")
            x = tok.to_var_input(MultiScaleTokens.from_flat(target, shapes, patch_nums))
            lr, wd = apply_schedule(optimizer, step, peak_lr=cfg.lr, warmup_it=cfg.warmup_ratio * max_steps,
                                    max_it=max_steps, wp0=cfg.wp0, wpe=cfg.wpe, twd=cfg.twd, twde=cfg.twde)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(labels, x)
            loss = token_loss(logits, target, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip))
            optimizer.step()
            step += 1
            seconds = time.perf_counter() - t0
            if step == 1 or step % cfg.log_every == 0 or step == max_steps:
                row = _metrics_row(step, loss, logits, target, begin_ends, lr, wd, grad_norm, seconds,
                                   target.numel() * world, world)
                if rank == 0:
                    history.append(row)
                    say(f"[train] step {step}/{max_steps} loss {row['loss']:.4f} Accm {row['Accm']:.2f} "
                        f"lr {lr:.3g} {row['tokens_per_s']:.0f} tok/s")
            if step % cfg.ckpt_every == 0 or step == max_steps:
                _report(step, raw, optimizer, {**state, "step": step}, history, rank, fs, run_dir)
        if batches_this_epoch == 0:
            raise RuntimeError(f"worker {rank} got no full batch of {cfg.per_worker_batch} rows: the dataset is "
                               f"too small for batch_size {cfg.batch_size} over {world} workers")


def _metrics_row(step: int, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                 begin_ends: list, lr: float, wd: float, grad_norm: float, seconds: float,
                 tokens: int, world: int) -> dict[str, Any]:
    ce, acc = per_scale_stats(logits.detach(), target, begin_ends)
    values = torch.tensor([loss.item(), *ce, *acc], dtype=torch.float64)
    if world > 1:  # average over workers (all ranks log on the same steps)
        import torch.distributed as dist
        dist.all_reduce(values)
        values /= world
    n = len(begin_ends)
    v = values.tolist()
    return step_row(step, v[0], v[1:1 + n], v[1 + n:], lr, wd, grad_norm, tokens / max(seconds, 1e-9), seconds)


def _report(step: int, raw: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
            history: list[dict[str, Any]], rank: int, fs: Any, run_dir: str) -> None:
    import ray.train

    last = history[-1] if history else {}
    metrics = {"step": step, "loss": last.get("loss"), "Accm": last.get("Accm")}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            save_checkpoint(d, raw, optimizer, state, history)
            write_jsonl(posixpath.join(run_dir, METRICS_FILE), history, fs=fs)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(step))


def _maybe_inject_failure(cfg: TrainConfig, step: int, rank: int, world: int, fs: Any, run_dir: str) -> None:
    """Fault injection for tests: the last worker dies (process exit) once, at `fail_at_step`."""
    if not cfg.fail_at_step or step != cfg.fail_at_step or rank != world - 1:
        return
    marker = posixpath.join(run_dir, FAULT_MARKER)
    if fs.exists(marker):
        return
    fs.pipe_file(marker, f"worker {rank} exited at step {step}\n".encode())
    say(f"[train] fault injection: worker {rank} exits at step {step}")
    os._exit(1)


def latest_checkpoint(cfg_or_run_dir: TrainConfig | str, storage_options: dict[str, Any] | None = None) -> str | None:
    """Newest checkpoint directory of a run (our names sort by step)."""
    import fsspec

    if isinstance(cfg_or_run_dir, TrainConfig):
        fs, run_dir = storage_fs(cfg_or_run_dir)
    else:
        fs, run_dir = fsspec.core.url_to_fs(cfg_or_run_dir, **(storage_options or {}))
    if not fs.exists(run_dir):
        return None
    dirs = checkpoint_dirs(fs, run_dir)
    return dirs[-1] if dirs else None
