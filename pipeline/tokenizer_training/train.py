"""Train a tokenizer with Ray Train (`TorchTrainer`, DDP), resumable, with held-out evaluation.

Driver (`fit`): checks the config, saves it beside the run, starts the TorchTrainer, plots the
curves and exports the final weights as `<run>/tokenizer.safetensors` + `<run>/tokenizer.json`
(what `load_tokenizer(name, checkpoint=..., config=...)` takes).
Workers (`train_loop_per_worker`): random crops from their share of the shards, the family's
training forward, reconstruction (+ SSIM, perceptual, GAN) losses, checkpoints every
`ckpt_every` steps; rank 0 evaluates every `eval_every` steps and writes a reconstruction grid.
Rerunning with the same storage_path/name resumes from the latest checkpoint.

Checkpoint directories use pipeline.var.checkpointing's layout (model.safetensors = the
tokenizer's own state dict, optimizer.pt, state.json, metrics.jsonl) plus the discriminator's
files when the GAN loss is on.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import torch

from pipeline.config import config_from_ray, save_config, to_ray_dict
from pipeline.ray_connect import init_ray
from pipeline.tokenizer_training.config import TokenizerTrainConfig
from pipeline.training.console import say
from pipeline.training.curves import plot_panels
from pipeline.training.run_config import checkpoint_dir_name, checkpoint_step, ray_run_config
from pipeline.var.checkpointing import METRICS_FILE, read_jsonl
from pipeline.var.train import storage_fs

EXPORT_WEIGHTS = "tokenizer.safetensors"
EXPORT_CONFIG = "tokenizer.json"
EXPORT_CONSTRUCTOR = "tokenizer_config.json"
PANELS = {
    "loss": ("loss", "rec", "quant"),
    "held-out PSNR (dB)": ("eval_psnr",),
    "held-out SSIM / codebook usage": ("eval_ssim", "eval_usage"),
    "learning rate": ("lr",),
}


@dataclass
class FitResult:
    run_dir: str
    final_step: int | None
    checkpoint: str | None
    export: str | None             # <run>/tokenizer.safetensors
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]]


# ------------------------------------------------------------------------------------------- driver
def absolute_paths(cfg: TokenizerTrainConfig) -> TokenizerTrainConfig:
    """Local paths made absolute: Ray workers run in their own working directories."""
    from pipeline.sources.listing import split_patterns

    def fix(path: str | None) -> str | None:
        return os.path.abspath(path) if path and "://" not in path else path

    return replace(cfg, storage_path=fix(cfg.storage_path), train_shards="::".join(fix(p) for p in split_patterns(cfg.train_shards)),
                   eval_shards="::".join(fix(p) for p in split_patterns(cfg.eval_shards)) if cfg.eval_shards else "",
                   init_checkpoint=fix(cfg.init_checkpoint), perceptual_weights=fix(cfg.perceptual_weights))


def fit(cfg: TokenizerTrainConfig) -> FitResult:
    cfg.validate()
    cfg = absolute_paths(cfg)
    from pipeline.runner.preflight import check_inputs
    from pipeline.sources.listing import expand_shards

    # Every shard exists before Ray starts (one line naming a missing one, exit 2).
    for patterns in (cfg.train_shards, cfg.eval_shards or []):
        if patterns:
            check_inputs(expand_shards(patterns, cfg.storage_options), cfg.storage_options)

    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg.ray_address, log_to_driver=True)
    fs, run_dir = storage_fs(cfg)
    fs.makedirs(run_dir, exist_ok=True)
    save_config(cfg, posixpath.join(run_dir, "train_config.yaml"), fs=fs)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_ray_dict(cfg)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=ray_run_config(cfg.name, run_dir, fs, max_failures=cfg.max_failures,
                                  keep_checkpoints=cfg.keep_checkpoints),
    )
    result = trainer.fit()
    history = read_jsonl(posixpath.join(run_dir, METRICS_FILE), fs=fs)
    png = plot_panels(history, PANELS, title=f"{cfg.family} tokenizer: {cfg.name}")
    if png:
        fs.pipe_file(posixpath.join(run_dir, "metrics.png"), png)
    ckpt = result.checkpoint
    export = posixpath.join(run_dir, EXPORT_WEIGHTS)
    final_step = (result.metrics or {}).get("step")
    if final_step is None and ckpt is not None:
        # A rerun of a finished run reports nothing new: its step is the latest checkpoint's.
        final_step = checkpoint_step(ckpt.path)
    return FitResult(run_dir=run_dir, final_step=final_step,
                     checkpoint=ckpt.path if ckpt is not None else None,
                     export=export if fs.exists(export) else None, metrics=result.metrics, history=history)


# ------------------------------------------------------------------------------------------- worker
def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from pipeline.tokenizer_training.data import CropStream, fixed_crops
    from pipeline.tokenizer_training.families import build_family
    from pipeline.tokenizer_training.steps import Trainer

    cfg = config_from_ray(TokenizerTrainConfig, loop_config["config"])  # storage options back from the object store
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # identical initial weights on every worker (DDP also broadcasts)

    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            from pipeline.tokenizer_training.steps import load_run_checkpoint
            restored = load_run_checkpoint(d)
    family = build_family(cfg.family, cfg.model_config, beta=cfg.beta, seed=cfg.seed,
                          init_checkpoint=None if restored else cfg.init_checkpoint, gq_tolerance=cfg.gq_tolerance,
                          gq_kl_weight=cfg.gq_kl_weight)
    trainer = Trainer(cfg, family, device, rank, world, restored)
    trainer.wrap(lambda m: ray.train.torch.prepare_model(
        m, parallel_strategy_kwargs={"broadcast_buffers": False, "find_unused_parameters": True}))

    fs, run_dir = storage_fs(cfg)
    stream = CropStream(cfg.train_shards, cfg.storage_options, cfg.crop_size, cfg.per_worker_batch, cfg.seed,
                        rank, world, cfg.min_scale, cfg.hflip, cfg.cache_images)
    if trainer.step:
        stream.skip(trainer.step)
    eval_crops = None
    if rank == 0 and cfg.eval_shards:
        eval_crops = fixed_crops(cfg.eval_shards, cfg.storage_options, cfg.crop_size, cfg.eval_crops,
                                 min_scale=cfg.min_scale)
    if rank == 0:
        n_params = sum(p.numel() for p in family.model.parameters())
        say(f"[train-tokenizer] {cfg.family} world={world} device={device} steps {trainer.step}->{cfg.max_steps} "
            f"params={n_params:,} batch={cfg.per_worker_batch}x{world} crop={cfg.crop_size}")

    for x in stream:
        if trainer.step >= cfg.max_steps:
            break
        row = trainer.train_step(x.to(device, non_blocking=True))
        step = trainer.step
        if rank == 0 and row is not None:
            trainer.history.append(row)
            say(f"[train-tokenizer] step {step}/{cfg.max_steps} loss {row['loss']:.4f} rec {row['rec']:.4f} "
                f"quant {row['quant']:.4f} {row['images_per_s']:.1f} img/s")
        if eval_crops is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            metrics, png = _evaluate(family, eval_crops)
            trainer.history.append({"step": step, "split": "eval", **{f"eval_{k}": v for k, v in metrics.items()}})
            say(f"[train-tokenizer] eval step {step}: PSNR {metrics['psnr']:.2f} dB SSIM {metrics['ssim']:.3f} "
                f"usage {metrics['usage']:.3f}")
            if png:
                fs.makedirs(posixpath.join(run_dir, "eval"), exist_ok=True)
                fs.pipe_file(posixpath.join(run_dir, "eval", f"recon_step{step:07d}.png"), png)
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
            _report(trainer, fs, run_dir, final=step == cfg.max_steps)


def _evaluate(family: Any, crops: torch.Tensor) -> tuple[dict[str, Any], bytes | None]:
    from pipeline.tokenizer_training.evaluate import evaluate_tokenizer
    return evaluate_tokenizer(family.tokenizer, crops)


def _report(trainer: Any, fs: Any, run_dir: str, final: bool) -> None:
    import ray.train

    from pipeline.var.checkpointing import write_jsonl

    last = next((r for r in reversed(trainer.history) if r.get("split") != "eval"), {})
    last_eval = next((r for r in reversed(trainer.history) if r.get("split") == "eval"), {})
    metrics = {"step": trainer.step, "loss": last.get("loss"), "eval_psnr": last_eval.get("eval_psnr")}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if trainer.rank == 0:
            trainer.save(d)
            write_jsonl(posixpath.join(run_dir, METRICS_FILE), trainer.history, fs=fs)
            if final:
                fs.put_file(os.path.join(d, "model.safetensors"), posixpath.join(run_dir, EXPORT_WEIGHTS))
                desc = trainer.export_description()
                fs.pipe_file(posixpath.join(run_dir, EXPORT_CONFIG), json.dumps(desc, indent=1).encode())
                # The constructor arguments alone: what `scaletok tokenize --tokenizer-config` reads.
                fs.pipe_file(posixpath.join(run_dir, EXPORT_CONSTRUCTOR), json.dumps(desc["config"], indent=1).encode())
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(trainer.step))
