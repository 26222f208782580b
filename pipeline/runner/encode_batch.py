"""A batch of decoded samples -> token rows, in the batch's order.

Images of one size are encoded together (center-crop/resize give one size; native mode buckets
by size). Each augmentation variant (a flip, a random crop, a flipped crop) is encoded as its own
batch with the same composition as the original, so the original's tokens never depend on which
variants were asked for. A batch the tokenizer rejects is retried image by image so one bad
image cannot fail its neighbours.

Continuous tokenizers (ViTok) give float latents instead of codes: each image's own latent grid
(NaFlex grids differ per image) is stored cast to the job's latent dtype; see sinks/schema.py.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.runner.config import JobSpec
from pipeline.sinks.schema import ORIGINAL_VARIANT, TokenRow, value_dtype, variant_names
from pipeline.sources.decode import DecodedSample
from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer
from pipeline.transient import OUT_OF_MEMORY_STATUS, TransientError, is_out_of_memory, release_cached_memory

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


def encode_variant(tok: Tokenizer, x: torch.Tensor, spec: JobSpec,
                   final_attempt: bool = True) -> list[Encoded | Exception]:
    """The batch at once, else image by image so one bad image cannot fail its neighbours. An
    image that runs out of memory on its own fails the attempt (TransientError, retried) unless
    this is the shard's last attempt: memory says nothing about the image (pipeline/transient.py)."""
    dtype = latent_dtype_of(spec)
    try:
        return list(encode_group(tok, x, spec.patch_nums, spec.tile_size, spec.overlap, dtype))
    except Exception as e:
        if is_out_of_memory(e):
            release_cached_memory()
        elif x.shape[0] == 1:
            raise
    results: list[Encoded | Exception] = []
    for i in range(x.shape[0]):
        try:
            results.extend(encode_group(tok, x[i:i + 1], spec.patch_nums, spec.tile_size, spec.overlap, dtype))
        except Exception as e:
            if is_out_of_memory(e):
                release_cached_memory()
                if not final_attempt:
                    raise TransientError(f"out of memory encoding one image: {e}") from e
            results.append(e)
    return results


def latent_dtype_of(spec: JobSpec) -> str:
    """The job's storage dtype for latents (recorded in its metadata by plan_job)."""
    return str(spec.metadata.get("latent_dtype") or "float16")


def encode_batch(tok: Tokenizer, spec: JobSpec, items: Sequence[tuple[DecodedSample, torch.Tensor | None]],
                 shard: str, histogram: np.ndarray | None = None, final_attempt: bool = True) -> list[TokenRow]:
    """items: (decoded sample, preprocessed (V, 3, H, W) tensor or None) in tar order; V = 1 + K
    views with --variants crop:K (crop_views.preprocess_views), else 1.
    `final_attempt`: see encode_variant (False: out of memory raises TransientError)."""
    variants = variant_names(spec.flips, spec.crops)  # (view, flip, row name); view 0 = the policy's image
    encoded: dict[int, dict[str, Encoded | Exception]] = {}
    by_size: dict[tuple[int, int], list[int]] = {}
    for pos, (sample, x) in enumerate(items):
        if sample.ok and x is not None:
            by_size.setdefault(tuple(x.shape[-2:]), []).append(pos)
    for positions in by_size.values():
        for view, flip, variant in variants:
            x = torch.cat([items[p][1][view:view + 1] for p in positions])
            try:
                results = encode_variant(tok, VARIANT_TRANSFORMS[flip or ORIGINAL_VARIANT](x), spec, final_attempt)
            except TransientError:
                raise
            except Exception as e:
                results = [e]
            for p, r in zip(positions, results):
                encoded.setdefault(p, {})[variant] = r

    dtype = value_dtype(tok.vocab_size, spec.metadata).to_pandas_dtype()
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
        for view, _, variant in variants:
            result = per_variant[variant]
            box = sample.crop_boxes[view] if sample.crop_boxes else None
            if isinstance(result, Exception):
                status = OUT_OF_MEMORY_STATUS if is_out_of_memory(result) else "encode_error"
                rows.append(TokenRow(status=status, error=f"{type(result).__name__}: {result}",
                                     variant=variant, crop_box=box, **base))
                if variant == ORIGINAL_VARIANT:
                    break  # no variant rows for a sample whose original failed
                continue
            if count_codes:
                histogram += np.bincount(result.tokens, minlength=histogram.size)[: histogram.size]
            rows.append(TokenRow(tokens=result.tokens.astype(dtype), scale_shapes=result.scale_shapes,
                                 height_padded=result.padded[0], width_padded=result.padded[1],
                                 variant=variant, crop_box=box, **base))
    return rows
