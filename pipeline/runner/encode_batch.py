"""A batch of decoded samples -> token rows, in the batch's order.

Images of one size are encoded together (center-crop/resize give one size; native mode buckets
by size). Each augmentation variant is encoded as its own batch with the same composition as the
original, so the original's tokens never depend on which variants were asked for. A batch the
tokenizer rejects is retried image by image so one bad image cannot fail its neighbours.

Continuous tokenizers (ViTok) give float latents instead of codes: each image's own latent grid
(NaFlex grids differ per image) is stored cast to the job's latent dtype; see sinks/schema.py.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline.sinks.schema import ORIGINAL_VARIANT, TokenRow, value_dtype
from pipeline.sources.decode import DecodedSample
from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer

VARIANT_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    ORIGINAL_VARIANT: lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
}


class Encoded:
    """One image's tokens (or latents) for one variant."""

    __slots__ = ("tokens", "scale_shapes", "padded")

    def __init__(self, tokens: np.ndarray, scale_shapes: list[int], padded: tuple[int, int]) -> None:
        self.tokens, self.scale_shapes, self.padded = tokens, scale_shapes, padded


def encode_group(tok: Tokenizer, x: torch.Tensor, patch_nums: Sequence[int], tile_size: int | None,
                 overlap: int | None, latent_dtype: str = "float16") -> list[Encoded]:
    out: MultiScaleTokens = tok.encode(x, patch_nums=patch_nums, tile_size=tile_size, overlap=overlap)
    if out.continuous or tok.continuous:
        return latent_rows(out, latent_dtype)
    flat = out.flat().reshape(x.shape[0], -1).to(torch.int64).cpu().numpy()
    if flat.size and (flat.min() < 0 or flat.max() >= tok.vocab_size):
        raise ValueError(f"token ids outside 0..{tok.vocab_size - 1}")
    shapes = [v for hw in out.scale_shapes for v in hw]
    padded = tuple(out.padded_size) if out.padded_size else (int(x.shape[-2]), int(x.shape[-1]))
    return [Encoded(row, shapes, padded) for row in flat]


def latent_rows(out: MultiScaleTokens, dtype: str) -> list[Encoded]:
    """Continuous tokens -> one row per image: its own grid's latents, cell-major, cast to `dtype`.

    NaFlex batches are zero-padded to the largest grid; `extras` names each image's grid
    (grid_rows/grid_cols) and content size (orig_height/orig_width). A tokenizer without them
    gives whole grids, and its padded canvas stands for the content size."""
    if len(out.grids) != 1:
        raise ValueError(f"continuous tokens must be one latent grid, got {len(out.grids)} scales")
    grid = out.grids[0].detach().float().cpu()
    if grid.ndim != 4:
        raise ValueError(f"latent grid must be (B, rows, cols, channels), got {tuple(grid.shape)}")
    b, rows_max, cols_max = (int(v) for v in grid.shape[:3])
    ex = out.extras
    rows = [int(v) for v in ex.get("grid_rows", [rows_max] * b)]
    cols = [int(v) for v in ex.get("grid_cols", [cols_max] * b)]
    canvas = tuple(out.padded_size or out.image_size or (0, 0))
    heights = [int(v) for v in ex.get("orig_height", [canvas[0]] * b)]
    widths = [int(v) for v in ex.get("orig_width", [canvas[1]] * b)]
    np_type = np.dtype(dtype)
    encoded = []
    for i in range(b):
        latent = grid[i, :rows[i], :cols[i]].reshape(-1).numpy()
        if not np.isfinite(latent).all():
            raise ValueError("the encoder gave non-finite latents")
        with np.errstate(over="ignore"):
            stored = latent.astype(np_type)
        if not np.isfinite(stored).all():
            raise ValueError(f"latents up to |{float(np.abs(latent).max()):.4g}| exceed the {dtype} range; "
                             f"use --latent-dtype float32")
        encoded.append(Encoded(stored, [rows[i], cols[i]], (heights[i], widths[i])))
    return encoded


def encode_variant(tok: Tokenizer, x: torch.Tensor, spec: Any) -> list[Encoded | Exception]:
    dtype = latent_dtype_of(spec)
    try:
        return list(encode_group(tok, x, spec.patch_nums, spec.tile_size, spec.overlap, dtype))
    except Exception:
        if x.shape[0] == 1:
            raise
    results: list[Encoded | Exception] = []
    for i in range(x.shape[0]):
        try:
            results.extend(encode_group(tok, x[i:i + 1], spec.patch_nums, spec.tile_size, spec.overlap, dtype))
        except Exception as e:
            results.append(e)
    return results


def latent_dtype_of(spec: Any) -> str:
    """The job's storage dtype for latents (recorded in its metadata by plan_job)."""
    return str((getattr(spec, "metadata", None) or {}).get("latent_dtype") or "float16")


def encode_batch(tok: Tokenizer, spec: Any, items: Sequence[tuple[DecodedSample, torch.Tensor | None]],
                 shard: str, histogram: np.ndarray | None = None) -> list[TokenRow]:
    """items: (decoded sample, preprocessed (1, 3, H, W) tensor or None) in tar order."""
    variants = [ORIGINAL_VARIANT, *spec.variants]
    encoded: dict[int, dict[str, Encoded | Exception]] = {}
    by_size: dict[tuple[int, int], list[int]] = {}
    for pos, (sample, x) in enumerate(items):
        if sample.ok and x is not None:
            by_size.setdefault(tuple(x.shape[-2:]), []).append(pos)
    for positions in by_size.values():
        x = torch.cat([items[p][1] for p in positions])
        for variant in variants:
            try:
                results = encode_variant(tok, VARIANT_TRANSFORMS[variant](x), spec)
            except Exception as e:
                results = [e]
            for p, r in zip(positions, results):
                encoded.setdefault(p, {})[variant] = r

    dtype = value_dtype(tok.vocab_size, getattr(spec, "metadata", None)).to_pandas_dtype()
    count_codes = histogram is not None and histogram.size > 0 and not tok.continuous
    rows: list[TokenRow] = []
    for pos, (sample, _) in enumerate(items):
        base = dict(key=sample.key, shard=shard, label=sample.label, meta=sample.meta,
                    height=sample.height, width=sample.width)
        per_variant = encoded.get(pos)
        if not sample.ok or per_variant is None:
            rows.append(TokenRow(status=sample.status if not sample.ok else "encode_error",
                                 error=sample.error or "not encoded", **base))
            continue
        for variant in variants:
            result = per_variant[variant]
            if isinstance(result, Exception):
                rows.append(TokenRow(status="encode_error", error=f"{type(result).__name__}: {result}",
                                     variant=variant, **base))
                if variant == ORIGINAL_VARIANT:
                    break  # no variant rows for a sample whose original failed
                continue
            if count_codes:
                histogram += np.bincount(result.tokens, minlength=histogram.size)[: histogram.size]
            rows.append(TokenRow(tokens=result.tokens.astype(dtype), scale_shapes=result.scale_shapes,
                                 height_padded=result.padded[0], width_padded=result.padded[1],
                                 variant=variant, **base))
    return rows
