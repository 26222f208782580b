"""The single-scale families (GQ, GSQ): encoder -> quantiser -> decoder, one token grid that is
the whole latent. They still answer with MultiScaleTokens, holding exactly one scale, so the job
and the Parquet schema treat every tokenizer alike (`scale_shapes` then has one (h, w) pair;
`patch_nums` is its longer side). `SingleScaleTokenizer` holds the encode/decode they share; a
family sets `quantizer` and, where its quantiser's index layout differs from the stored grid's,
`codes_to_grid` / `grid_to_codes`.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.tokenizers import tiling
from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer


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


class SingleScaleTokenizer(Tokenizer):
    """`model.encoder` -> `quantizer` -> `model.decoder` over a canvas padded to the stride."""

    input_range = (-1.0, 1.0)
    supports_tiling = False

    @property
    def quantizer(self) -> Any:
        raise NotImplementedError

    def codes_to_grid(self, indices: torch.Tensor) -> torch.Tensor:
        """The quantiser's indices as the stored grid: (B, h, w), or (B, h, w, G) when grouped."""
        return indices

    def grid_to_codes(self, grid: torch.Tensor) -> torch.Tensor:
        """A stored grid as the quantiser's `lookup` takes it."""
        return grid

    def _encode(self, x: torch.Tensor, patch_nums: tuple[int, ...], tile_size: int | None,
                overlap: int | None) -> MultiScaleTokens:
        h, w = x.shape[-2:]
        canvas = pad_to_multiple(x, self.downsample)
        grid_hw = (canvas.shape[-2] // self.downsample, canvas.shape[-1] // self.downsample)
        check_single_scale(self.name, patch_nums, self.patch_nums, grid_hw, tile_size, overlap)
        grid = self.codes_to_grid(self.quantizer(self.model.encoder(canvas)).indices)
        return MultiScaleTokens(grids=[grid], patch_nums=(max(grid_hw),), image_size=(h, w),
                                padded_size=tuple(canvas.shape[-2:]))

    def _decode(self, tokens: MultiScaleTokens, upto: int) -> torch.Tensor:
        image = self.model.decoder(self.quantizer.lookup(self.grid_to_codes(tokens.grids[0])))
        if tokens.image_size is not None:
            image = image[:, :, :tokens.image_size[0], :tokens.image_size[1]]
        return image

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output before quantisation (B, C, H/ds, W/ds), float32."""
        with torch.inference_mode(), self.autocast():
            return self.model.encoder(x.to(self.device)).float()

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The decoder on a quantised latent (B, C, h, w), not clamped, float32."""
        with torch.inference_mode(), self.autocast():
            return self.model.decoder(latent.to(self.device)).float()
