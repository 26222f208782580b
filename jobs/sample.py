"""`scaletok sample` / `python -m jobs.sample`: class-conditional images from a VAR as a PNG grid.

--checkpoint takes a training checkpoint directory or run directory (`scaletok train` output: the
tokenizer is rebuilt from its record), or an official `var_d*.pth` (then give the tokenizer with
--tokenizer-checkpoint; depth and widths are read from the weights). One row per class.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import add_dataclass_args, config_from_args


@dataclass
class SampleConfig:
    checkpoint: str = ""
    out: str = "samples.png"
    classes: list[int] = field(default_factory=lambda: [0])
    per_class: int = 4
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    temperature: float = 1.0
    seed: int = 0
    more_smooth: bool = False
    tokenizer: str = "var-vqvae"
    tokenizer_checkpoint: str | None = None
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    storage_options: dict[str, Any] = field(default_factory=dict)
    save_tokens: bool = True


HELP = {
    "checkpoint": "training checkpoint dir, run dir (newest checkpoint), or official var_d*.pth",
    "out": "PNG grid to write (tokens go beside it as .npz)",
    "classes": "class labels, e.g. 1,2,3 (1000 = unconditional)",
    "per_class": "images per class (one row each)",
    "cfg": "classifier-free guidance at the last scale (ramps linearly from 0 at the first)",
    "top_k": "keep the k most likely tokens (0: off)",
    "top_p": "keep the smallest set with this probability mass (0: off)",
    "temperature": "divide logits by this before filtering (1: the reference)",
    "seed": "seed of the sampling generator",
    "more_smooth": "Gumbel-softmax soft codes (visualisation only, as the reference's more_smooth)",
    "tokenizer": "tokenizer for an official .pth (our checkpoints record theirs)",
    "tokenizer_checkpoint": "tokenizer weights (overrides the path recorded in our checkpoints)",
    "tokenizer_config": "tokenizer constructor arguments for an official .pth",
    "device": "cpu or cuda",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, SampleConfig, help_texts=HELP)


def load_model(cfg: SampleConfig):
    from pipeline.tokenizers import load_tokenizer
    from pipeline.var import load_trained, load_var

    path = cfg.checkpoint
    if path.endswith((".pth", ".pt", ".safetensors", ".ckpt")):
        tok = load_tokenizer(cfg.tokenizer, cfg.tokenizer_checkpoint, cfg.tokenizer_config or None, device=cfg.device)
        return load_var(path, tokenizer=tok, device=cfg.device)
    return load_trained(path, storage_options=cfg.storage_options, tokenizer_checkpoint=cfg.tokenizer_checkpoint,
                        device=cfg.device)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pipeline.tokenizers.checkpoints import CheckpointError
    from pipeline.var.sampling import image_grid, sample

    try:
        cfg = config_from_args(SampleConfig, args)
        if not cfg.checkpoint:
            raise ValueError("--checkpoint is required")
        model = load_model(cfg)
    except (ValueError, KeyError, CheckpointError, FileNotFoundError) as exc:
        print(f"scaletok sample: error: {exc}", file=sys.stderr)
        return 2
    labels = torch.tensor([c for c in cfg.classes for _ in range(cfg.per_class)])
    try:
        result = sample(model, len(labels), labels, cfg=cfg.cfg, top_k=cfg.top_k, top_p=cfg.top_p,
                        temperature=cfg.temperature, seed=cfg.seed, more_smooth=cfg.more_smooth)
    except ValueError as exc:
        print(f"scaletok sample: error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    image_grid(result.images, ncols=cfg.per_class).save(cfg.out)
    if cfg.save_tokens:
        np.savez(os.path.splitext(cfg.out)[0] + ".npz", tokens=result.flat().cpu().numpy(),
                 labels=labels.numpy(), patch_nums=np.array(model.patch_nums))
    print(f"wrote {len(labels)} samples ({len(cfg.classes)} classes x {cfg.per_class}, cfg {cfg.cfg}, "
          f"top-k {cfg.top_k}, top-p {cfg.top_p}) to {cfg.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sample", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
