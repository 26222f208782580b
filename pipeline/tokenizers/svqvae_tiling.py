"""SVQVAE's tile geometry: canvas padding, per-scale token grids and decode tiles.

The reference's rules (tokenizers spec 1.6), restated:
  pad      L_pad = ceil((L - O) / S) * S + O with S = T - O, reflect padding on the bottom/right.
  tiles    origins k*S along the padded length, the last one moved to L_pad - T.
  scale p  t = T/ds latent cells per tile; ov = max(1, round((O//ds) * p / t)) (Python round, i.e.
           banker's); grid = ((tiles_y - 1) * (p - ov) + p, (tiles_x - 1) * (p - ov) + p); the
           blended latent is area-resized to the grid when p <= t, bilinear otherwise.
  output   round(p / t * H) x round(p / t * W).

With `quirks=False` three things differ, each only where the reference breaks:
  * a side no longer than the overlap is padded to one full tile (mirroring repeatedly) instead
    of crashing;
  * a scale whose tile stride p - ov would be 0 on a multi-tile canvas (p = 1 collapses the image
    to one token) gets a grid proportional to the latent, decoded in one piece;
  * blending keeps full weight at the canvas border (`tiling.blend(convention="fixed")`), so the
    outermost latent row/column and pixel row/column are not zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.tokenizers.tiling import TilePlan, tile_origins


@dataclass(frozen=True)
class ScaleGeometry:
    """Where scale `patch_num`'s tokens sit and how they decode.

    grid:      token grid (h, w)
    tile:      latent tile side for decoding (p), 0 when the grid is decoded in one piece
    overlap:   latent overlap between decode tiles
    out_size:  (h, w) of the decoded image after the final crop
    """

    patch_num: int
    grid: tuple[int, int]
    tile: int
    overlap: int
    resize_mode: str
    out_size: tuple[int, int]


def padded_length(length: int, tile: int, overlap: int, *, quirks: bool) -> int:
    if length <= 0:
        raise ValueError(f"image side must be positive, got {length}")
    stride = tile - overlap
    covered = math.ceil((length - overlap) / stride) * stride + overlap
    if quirks:
        if length <= overlap:
            raise ValueError(
                f"an image side of {length}px is not larger than the overlap ({overlap}px): the "
                f"reference SVQVAE crashes here; use reference_quirks=False to pad it to one tile")
        return max(length, covered)
    return max(tile, covered)


def plan_canvas(height: int, width: int, tile: int, overlap: int, ds: int, *, quirks: bool) -> TilePlan:
    """Pixel tile plan of an image: padded canvas size and tile origins."""
    if tile <= overlap or overlap < 0:
        raise ValueError(f"need tile_size > overlap >= 0, got tile_size={tile}, overlap={overlap}")
    if tile % ds or overlap % ds:
        raise ValueError(f"tile_size ({tile}) and overlap ({overlap}) must be multiples of the "
                         f"downsampling factor {ds}")
    ph = padded_length(height, tile, overlap, quirks=quirks)
    pw = padded_length(width, tile, overlap, quirks=quirks)
    plan = TilePlan(height, width, ph, pw, tile, overlap, axis_origins(ph, tile, overlap),
                    axis_origins(pw, tile, overlap))
    if not quirks and len(plan.tiles) > 1 and overlap < 2 * ds:
        # The Hann windows of abutting tiles are both zero on the shared latent row: no weight.
        raise ValueError(f"overlap must be at least {2 * ds}px (two latent cells) for multi-tile "
                         f"images, got {overlap}")
    return plan


def axis_origins(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile origins along one axis (one tile when the length fits, even if the stride is 0)."""
    if length <= tile:
        return (0,)
    return tile_origins(length, tile, overlap)


def tiled_scale(p: int, plan: TilePlan, ds: int, *, quirks: bool) -> ScaleGeometry:
    """Geometry of scale p on a tiled canvas (p = T/ds is full resolution)."""
    if p <= 0:
        raise ValueError(f"patch_nums must be positive, got {p}")
    t, o = plan.tile // ds, plan.overlap // ds
    tiles_y, tiles_x = plan.grid
    ov = max(1, round(o * p / t))
    stride = p - ov
    out_size = (round(p / t * plan.height), round(p / t * plan.width))
    mode = "area" if p <= t else "bilinear"
    if stride < 1 and (tiles_y > 1 or tiles_x > 1) and not quirks:
        grid = (_round_half_up(plan.padded_height // ds * p / t),
                _round_half_up(plan.padded_width // ds * p / t))
        return ScaleGeometry(p, grid, 0, 0, mode, out_size)
    grid = ((tiles_y - 1) * stride + p, (tiles_x - 1) * stride + p)
    return ScaleGeometry(p, grid, p, ov, mode, out_size)


def whole_scale(p: int, latent_hw: tuple[int, int], image_hw: tuple[int, int]) -> ScaleGeometry:
    """Geometry of scale p without tiling: the grid's longer side is p (p x p for squares)."""
    if p <= 0:
        raise ValueError(f"patch_nums must be positive, got {p}")
    lh, lw = latent_hw
    longest = max(lh, lw)
    grid = (_round_half_up(lh * p / longest), _round_half_up(lw * p / longest))
    mode = "area" if grid[0] <= lh and grid[1] <= lw else "bilinear"
    out_size = (round(image_hw[0] * grid[0] / lh), round(image_hw[1] * grid[1] / lw))
    return ScaleGeometry(p, grid, 0, 0, mode, out_size)


def _round_half_up(v: float) -> int:
    return max(1, math.floor(v + 0.5))


def resize_latent(latent: torch.Tensor, geometry: ScaleGeometry) -> torch.Tensor:
    if tuple(latent.shape[-2:]) == geometry.grid:
        return latent
    return F.interpolate(latent, size=geometry.grid, mode=geometry.resize_mode)


def decode_plan(geometry: ScaleGeometry, ds: int) -> tuple[TilePlan, TilePlan]:
    """(latent plan, pixel plan) of a tiled scale's decode."""
    h, w = geometry.grid
    p, ov = geometry.tile, geometry.overlap
    oy, ox = axis_origins(h, p, ov), axis_origins(w, p, ov)
    latent_plan = TilePlan(h, w, h, w, p, ov, oy, ox)
    pixel_plan = TilePlan(h * ds, w * ds, h * ds, w * ds, p * ds, ov * ds,
                          tuple(y * ds for y in oy), tuple(x * ds for x in ox))
    return latent_plan, pixel_plan


def reflect_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) on the bottom/right; pads longer than the image mirror repeatedly
    (torch's reflect pads at most size - 1 in one go)."""
    while x.shape[-2] < height or x.shape[-1] < width:
        ph = min(height - x.shape[-2], x.shape[-2] - 1)
        pw = min(width - x.shape[-1], x.shape[-1] - 1)
        if (ph <= 0 and height > x.shape[-2]) or (pw <= 0 and width > x.shape[-1]):
            # A 1-pixel side has nothing to mirror.
            return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), mode="replicate")
        x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), mode="reflect")
    return x


def fit_output(img: torch.Tensor, out_size: tuple[int, int], *, fill_edge: bool) -> torch.Tensor:
    """Crop to out_size; where the decoded canvas is smaller (odd p), fill with zeros like the
    reference (`fill_edge=False`) or repeat the edge pixels."""
    oh, ow = out_size
    img = img[:, :, :oh, :ow]
    ph, pw = oh - img.shape[-2], ow - img.shape[-1]
    if ph > 0 or pw > 0:
        if fill_edge:
            img = F.pad(img, (0, pw, 0, ph), mode="replicate")
        else:
            img = F.pad(img, (0, pw, 0, ph), mode="constant", value=0.0)
    return img
