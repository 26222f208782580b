"""Helpers shared by single-scale families (GQ, GSQ): they still answer with MultiScaleTokens,
holding exactly one scale whose grid is the whole latent, so the job and the Parquet schema treat
every tokenizer alike (`scale_shapes` then has one (h, w) pair; `patch_nums` is its longer side).
"""

from __future__ import annotations

import torch

from pipeline.tokenizers import tiling


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) bottom/right to multiples of the encoder stride (reflect, see tiling.pad_to)."""
    h, w = x.shape[-2:]
    return tiling.pad_to(x, -(-h // multiple) * multiple, -(-w // multiple) * multiple)


def check_single_scale(family: str, patch_nums: tuple[int, ...], default: tuple[int, ...],
                       grid_hw: tuple[int, int], tile_size: int | None, overlap: int | None) -> None:
    """Refuse options a single-scale, untiled family cannot honour, instead of ignoring them."""
    if tile_size or overlap:
        raise ValueError(f"{family} does not tile (its GroupNorm/attention use whole-image statistics, "
                         f"so tiles would not give the same tokens); pass tile_size=None, overlap=None "
                         f"and limit the image size with the preprocess policy (e.g. max_side)")
    if tuple(patch_nums) not in (tuple(default), (max(grid_hw),)):
        raise ValueError(f"{family} is single-scale: its one token grid is set by the image size "
                         f"({grid_hw[0]} x {grid_hw[1]} here), got patch_nums={list(patch_nums)}; "
                         f"pass patch_nums=None")
