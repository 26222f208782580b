"""Pictures people would rather look at than numbers: reconstructions per scale side by side."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images: torch.Tensor, input_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(B, 3, H, W) float in `input_range` -> (B, H, W, 3) uint8."""
    lo, hi = input_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def scale_grid(originals: np.ndarray, per_scale: Sequence[np.ndarray], labels: Sequence[str],
               cell: int = 128, first_label: str = "input") -> Image.Image:
    """One row per image: the original, then its reconstruction after each scale.

    originals: (B, H, W, 3) uint8; per_scale: one (B, H, W, 3) uint8 array per column."""
    cols = 1 + len(per_scale)
    pad, head = 4, 16
    grid = Image.new("RGB", (cols * (cell + pad) + pad, len(originals) * (cell + pad) + pad + head), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate([first_label, *labels]):
        draw.text((pad + c * (cell + pad), 2), text, fill="black")
    for r, row in enumerate(zip(originals, *per_scale)):
        for c, img in enumerate(row):
            tile = Image.fromarray(img).resize((cell, cell), Image.Resampling.BICUBIC)
            grid.paste(tile, (pad + c * (cell + pad), head + pad + r * (cell + pad)))
    return grid
