"""Tile planning and window blending for encoding images larger than one encoder pass.

Independent of any model: a plan says where square tiles of `tile` pixels with `overlap` pixels
of overlap sit on a bottom/right-padded canvas, and `blend` merges per-tile maps (latents or
pixels) with separable Hann windows.

Two window conventions:
  reference  the SVQVAE/FlexVAR one: Hann(periodic=False) on every side, zero at both ends, and
             division by (sum of weights + 1e-6). Its outermost canvas row/column gets weight 0
             from every tile, so it comes out exactly 0 (the "black top/left edge").
  fixed      (default) a tile side that lies on the canvas border keeps full weight up to that
             border (the window's outer half is flattened to 1), so the weights are positive
             everywhere and normalise to exactly one; a constant map blends to the same constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    padded_height: int
    padded_width: int
    tile: int
    overlap: int
    origins_y: tuple[int, ...]
    origins_x: tuple[int, ...]

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.origins_y), len(self.origins_x)

    @property
    def tiles(self) -> list[tuple[int, int]]:
        """Tile origins (y0, x0), row-major."""
        return [(y, x) for y in self.origins_y for x in self.origins_x]

    def scaled(self, factor: int) -> "TilePlan":
        """The same plan in units `factor` times smaller (pixels -> latent cells)."""
        for v in (self.tile, self.overlap, self.padded_height, self.padded_width):
            if v % factor:
                raise ValueError(f"plan value {v} is not divisible by {factor}")
        return TilePlan(-(-self.height // factor), -(-self.width // factor),
                        self.padded_height // factor, self.padded_width // factor,
                        self.tile // factor, self.overlap // factor,
                        tuple(y // factor for y in self.origins_y), tuple(x // factor for x in self.origins_x))


def padded_length(length: int, tile: int, overlap: int, multiple_of: int = 1) -> int:
    """Canvas length so tiles of `tile` with stride tile-overlap cover it exactly.

    A length that fits in one tile is only rounded up to `multiple_of` (one smaller tile), which
    avoids the reference's crash on images no larger than the overlap.
    """
    _check(tile, overlap)
    if length <= tile:
        return _round_up(length, multiple_of)
    stride = tile - overlap
    return math.ceil((length - overlap) / stride) * stride + overlap


def tile_origins(padded: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Origins along one axis of a padded canvas; the last tile ends exactly at the border."""
    if padded <= tile:
        return (0,)
    _check(tile, overlap)
    stride = tile - overlap
    n = math.ceil((padded - overlap) / stride)
    origins = [k * stride for k in range(n)]
    origins[-1] = padded - tile
    return tuple(origins)


def default_overlap(tile: int, multiple_of: int = 1) -> int:
    """The overlap used when only a tile size is given: a quarter of the tile (a multiple of
    `multiple_of`), enough for the Hann blend to hide seams; never 0, which leaves cells where
    two tiles meet with no weight."""
    return max(multiple_of, (tile // 4) // multiple_of * multiple_of)


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple_of: int = 1) -> TilePlan:
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if tile % multiple_of or overlap % multiple_of:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {multiple_of}")
    ph = padded_length(height, tile, overlap, multiple_of)
    pw = padded_length(width, tile, overlap, multiple_of)
    return TilePlan(height, width, ph, pw, tile, overlap,
                    tile_origins(ph, tile, overlap), tile_origins(pw, tile, overlap))


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom/right to (height, width): reflect where the image is large
    enough, replicate otherwise (reflect cannot pad by more than the size minus one)."""
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {tuple(x.shape[-2:])} down to {(height, width)}")
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def hann(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Symmetric Hann window, zero at both ends (torch.hann_window(periodic=False))."""
    if n == 1:
        return torch.ones(1, device=device)
    return torch.hann_window(n, periodic=False, dtype=torch.float32, device=device)


def tile_window(h: int, w: int, *, top: bool = False, bottom: bool = False, left: bool = False,
                right: bool = False, device: torch.device | str | None = None) -> torch.Tensor:
    """2-D window (h, w); a side flagged True lies on the canvas border and keeps weight 1 there."""
    wy, wx = hann(h, device), hann(w, device)
    wy, wx = _flatten_edges(wy, top, bottom), _flatten_edges(wx, left, right)
    return wy[:, None] * wx[None, :]


def _flatten_edges(win: torch.Tensor, start: bool, end: bool) -> torch.Tensor:
    n = win.numel()
    win = win.clone()
    half = (n + 1) // 2
    if start:
        win[:half] = 1.0
    if end:
        win[n - half:] = 1.0
    return win


def blend(tiles: Sequence[torch.Tensor], plan: TilePlan, *, convention: str = "fixed") -> torch.Tensor:
    """Merge per-tile maps (B, C, t_h, t_w), in `plan.tiles` order, into (B, C, H_pad, W_pad)."""
    if len(tiles) != len(plan.tiles):
        raise ValueError(f"{len(tiles)} tiles for a plan of {len(plan.tiles)}")
    if convention not in ("fixed", "reference"):
        raise ValueError(f"unknown blending convention {convention!r}")
    first = tiles[0]
    b, c = first.shape[:2]
    out = torch.zeros(b, c, plan.padded_height, plan.padded_width, dtype=torch.float32, device=first.device)
    weight = torch.zeros(1, 1, plan.padded_height, plan.padded_width, dtype=torch.float32, device=first.device)
    for (y0, x0), t in zip(plan.tiles, tiles):
        th, tw = t.shape[-2:]
        if convention == "reference":
            win = tile_window(th, tw, device=t.device)
        else:
            win = tile_window(th, tw, top=y0 == 0, bottom=y0 + th == plan.padded_height,
                              left=x0 == 0, right=x0 + tw == plan.padded_width, device=t.device)
        out[:, :, y0:y0 + th, x0:x0 + tw] += t.float() * win
        weight[:, :, y0:y0 + th, x0:x0 + tw] += win
    if convention == "reference":
        return out / (weight + 1e-6)
    if not bool((weight > 0).all()):
        # abutting Hann windows (overlap < 2 cells) leave seams with no weight at all
        raise ValueError(f"tile overlap {plan.overlap} leaves cells with zero blending weight; use overlap >= 2")
    return out / weight


def crop_tiles(x: torch.Tensor, plan: TilePlan) -> list[torch.Tensor]:
    """Cut a padded canvas (B, C, H_pad, W_pad) into the plan's tiles, row-major.

    An axis shorter than a tile has one tile clipped to the canvas, so tiles need not be square."""
    t_h, t_w = min(plan.tile, plan.padded_height), min(plan.tile, plan.padded_width)
    return [x[:, :, y:y + t_h, x0:x0 + t_w] for y, x0 in plan.tiles]


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _check(tile: int, overlap: int) -> None:
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
