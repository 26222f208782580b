"""`scaletok sample` / `python -m jobs.sample`: class-conditional images from a VAR, as a PNG grid
(one process, one row per class) or, with --npz, as the ADM evaluation .npz (arr_0 uint8 NHWC,
arr_1 labels, tokens) sampled on a Ray cluster, one actor per GPU (CPU fallback), resumable per
chunk and the same whatever the number of actors (pipeline/var/sample_job.py).

--checkpoint takes a training checkpoint directory or run directory (`scaletok train` output: the
tokenizer is rebuilt from its record), or an official `var_d*.pth` (then give the tokenizer with
--tokenizer-checkpoint; depth and widths are read from the weights).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from pipeline.cli import job_main
from pipeline.config import add_dataclass_args, config_from_args
from pipeline.errors import UsageError, checking_inputs


@dataclass
class SampleConfig:
    checkpoint: str = field(default="", metadata={"help": (
        "training checkpoint dir, run dir (newest checkpoint), or official var_d*.pth (required)")})
    out: str = field(default="samples.png", metadata={"help": "PNG grid to write (tokens go beside it as .npz)"})
    classes: list[str] = field(default_factory=list, metadata={"help": (
        "classes as indices or as the training data's class names, e.g. 1,2,3 or n01440764,tabby "
        "(the model's class count = unconditional); default: every class of the model with --npz, "
        "class 0 for the PNG grid")})
    per_class: int = field(default=4, metadata={"help": "images per class (one row each)"})
    cfg: float = field(default=1.5, metadata={"help": (
        "classifier-free guidance at the last scale (ramps linearly from 0 at the first)")})
    top_k: int = field(default=900, metadata={"help": "keep the k most likely tokens (0: off)"})
    top_p: float = field(default=0.96, metadata={"help": "keep the smallest set with this probability mass (0: off)"})
    temperature: float = field(default=1.0, metadata={"help": "divide logits by this before filtering (1: the reference)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling generator"})
    more_smooth: bool = field(default=False, metadata={"help": (
        "Gumbel-softmax soft codes (visualisation only, as the reference's more_smooth)")})
    tokenizer: str = field(default="var-vqvae", metadata={"help": (
        "tokenizer for an official .pth (our checkpoints record theirs)")})
    tokenizer_checkpoint: str | None = field(default=None, metadata={"help": (
        "tokenizer weights (overrides the path recorded in our checkpoints)")})
    tokenizer_config: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "tokenizer constructor arguments for an official .pth")})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    storage_options: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "fsspec option for a checkpoint on S3, e.g. endpoint_url=http://...")})
    save_tokens: bool = field(default=True, metadata={"help": "also save the sampled tokens and labels as .npz beside --out"})
    npz: str | None = field(default=None, metadata={"help": (
        "write the ADM evaluation .npz here (arr_0 uint8 NHWC images, arr_1 labels, tokens) instead of "
        "the PNG grid, sampled on Ray actors; chunks are kept in <npz>.chunks/ so a rerun resumes")})
    chunk_size: int = field(default=50, metadata={"help": (
        "--npz: images per chunk (one batch, its own seed; the unit of resume; changing it changes the samples)")})
    num_actors: int | None = field(default=None, metadata={"help": (
        "--npz: sampling actors (default: one per GPU of the cluster, else one per CPU)")})
    address: str | None = field(default=None, metadata={"help": (
        "--npz: Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, SampleConfig)


def model_spec(cfg: SampleConfig):
    from pipeline.var.sample_job import ModelSpec

    return ModelSpec(checkpoint=cfg.checkpoint, tokenizer=cfg.tokenizer, tokenizer_checkpoint=cfg.tokenizer_checkpoint,
                     tokenizer_config=dict(cfg.tokenizer_config or {}) or None)


def load_model(cfg: SampleConfig):
    from pipeline.var.sample_job import load_model as load

    return load(model_spec(cfg), cfg.device, cfg.storage_options)


def chosen_classes(cfg: SampleConfig, model) -> list[int]:
    """--classes as indices, names resolved through the class names the model was trained with."""
    from pipeline.var.loading import resolve_classes

    return resolve_classes(cfg.classes, model.num_classes, getattr(model, "class_names", None))


def run_npz(cfg: SampleConfig) -> int:
    """--npz: every class (or --classes) x --per-class on Ray actors, into the evaluation .npz."""
    from pipeline.ray_connect import init_ray
    from pipeline.var.sample_job import SampleSettings, sample_to_npz

    with checking_inputs():
        model = load_model(cfg)
        classes = chosen_classes(cfg, model) or list(range(model.num_classes))
        settings = SampleSettings(cfg=cfg.cfg, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature,
                                  seed=cfg.seed, more_smooth=cfg.more_smooth)
        init_ray(cfg.address)
        summary = sample_to_npz(model_spec(cfg), classes, cfg.per_class, settings, cfg.npz, chunk_size=cfg.chunk_size,
                                num_actors=cfg.num_actors, storage_options=cfg.storage_options)
    print(f"wrote {summary['images']} samples ({len(classes)} classes x {cfg.per_class}, cfg {cfg.cfg}, top-k "
          f"{cfg.top_k}, top-p {cfg.top_p}; {summary['sampled_chunks']} of {summary['chunks']} chunks sampled now) "
          f"to {cfg.npz}")
    return 0


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pipeline.var.sampling import image_grid, sample

    with checking_inputs():
        cfg = config_from_args(SampleConfig, args)
        if not cfg.checkpoint:
            raise UsageError("--checkpoint is required")
        if cfg.npz:
            return run_npz(cfg)
        model = load_model(cfg)
        classes = chosen_classes(cfg, model) or [0]
    labels = torch.tensor([c for c in classes for _ in range(cfg.per_class)])
    with checking_inputs():  # the sampling knobs are checked as sampling starts
        result = sample(model, len(labels), labels, cfg=cfg.cfg, top_k=cfg.top_k, top_p=cfg.top_p,
                        temperature=cfg.temperature, seed=cfg.seed, more_smooth=cfg.more_smooth)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    image_grid(result.images, ncols=cfg.per_class).save(cfg.out)
    if cfg.save_tokens:
        np.savez(os.path.splitext(cfg.out)[0] + ".npz", tokens=result.flat().cpu().numpy(),
                 labels=labels.numpy(), patch_nums=np.array(model.patch_nums))
    print(f"wrote {len(labels)} samples ({len(classes)} classes x {cfg.per_class}, cfg {cfg.cfg}, "
          f"top-k {cfg.top_k}, top-p {cfg.top_p}) to {cfg.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.sample", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
