"""Token Parquet -> MultiScaleTokens, for looking at stored tokens (reports, demos, notebooks).

Training reads the same files through Ray Data with its own vectorised collate (pipeline/var);
this reader is the simple path: a few rows back into what `tok.decode` takes. It rebuilds what
the row does not hold from the file's metadata, so stored tokens decode to the same image as the
tokens the job had in memory: the encoded image size (from the original size and the image
policy), the tile settings of a tiled job, and for continuous tokenizers the latent grid.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.sinks.schema import decode_metadata
from pipeline.tokenizers.base import MultiScaleTokens


def read_metadata(path: str, filesystem: Any = None) -> dict[str, Any]:
    """The `scaletok.*` key-value metadata of one token file."""
    return decode_metadata(pq.read_schema(path, filesystem=filesystem))


def ok_rows(table: pa.Table) -> pa.Table:
    return table.filter(pa.compute.equal(table["status"], "ok"))


def row_tokens(table: pa.Table, index: int, patch_nums: Sequence[int] | None = None, groups: int | None = None,
               metadata: dict[str, Any] | None = None) -> MultiScaleTokens:
    """Row `index` of a token table as a batch of one.

    patch_nums, groups and metadata default to the table's own `scaletok.*` metadata (give
    `metadata` when the table lost it, e.g. after a pandas round trip)."""
    meta = decode_metadata(table.schema) if metadata is None else metadata
    values = table["tokens"][index].values
    if values is None or len(values) == 0:
        raise ValueError(f"row {index} holds no tokens (status {table['status'][index].as_py()!r})")
    shapes = [tuple(int(v) for v in pair) for pair in
              np.asarray(table["scale_shapes"][index].values.to_numpy(zero_copy_only=False)).reshape(-1, 2)]
    content = (table["height_padded"][index].as_py(), table["width_padded"][index].as_py())
    if meta.get("continuous") or pa.types.is_floating(values.type):
        return _latents(values, shapes, content, meta)
    patch_nums = tuple(int(p) for p in (patch_nums if patch_nums is not None else meta.get("patch_nums") or ()))
    groups = int(groups if groups is not None else meta.get("groups") or 1)
    flat = torch.from_numpy(np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64))
    t = flat.reshape(1, -1, groups) if groups > 1 else flat.reshape(1, -1)
    size = (table["height"][index].as_py(), table["width"][index].as_py())
    image_size = encoded_size(size, meta.get("preprocess"), content)
    return MultiScaleTokens.from_flat(t, shapes, patch_nums, image_size=image_size, padded_size=content,
                                      extras=_tile_extras(meta))


def encoded_size(original: tuple[int | None, int | None], preprocess: dict[str, Any] | None,
                 canvas: tuple[int, int]) -> tuple[int, int]:
    """The size of the image the tokenizer was given (before its own stride/tile padding), from
    the original size and the image policy: the arithmetic of `preprocess.apply_policy`.
    Falls back to the encoded canvas when the policy or the original size is unknown."""
    h, w = original
    if not preprocess or h is None or w is None:
        return canvas
    mode = preprocess.get("mode")
    if mode in ("center-crop", "resize"):
        size = (int(preprocess["size"]),) * 2
    elif mode == "native":
        max_side = preprocess.get("max_side")
        if max_side is not None and max(h, w) > max_side:
            scale = max_side / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
        else:
            size = (int(h), int(w))
    else:
        return canvas
    # A canvas smaller than the policy's output means this is not the policy that made the row.
    return size if size[0] <= canvas[0] and size[1] <= canvas[1] else canvas


def _tile_extras(meta: dict[str, Any]) -> dict[str, Any]:
    """A tiled job's tile settings, which families that tile need to rebuild their geometry
    (without them the tokenizer's own defaults apply, as they did in the job)."""
    job = meta.get("job_config") or {}
    if job.get("tile_size") is None:
        return {}
    return {"tile_size": int(job["tile_size"]), "overlap": int(job.get("overlap") or 0)}


def _latents(values: pa.Array, shapes: list[tuple[int, int]], content: tuple[int, int],
             meta: dict[str, Any]) -> MultiScaleTokens:
    """A continuous row: one (rows, cols) grid of `latent_channels` values per cell, as float32,
    with the NaFlex extras (grid and content size) that ViTok's decoder reads."""
    if len(shapes) != 1:
        raise ValueError(f"a continuous row holds one latent grid, got scale_shapes for {len(shapes)}")
    (rows, cols), = shapes
    latent = values.to_numpy(zero_copy_only=False).astype(np.float32)  # a writable copy
    channels = int(meta.get("latent_channels") or latent.size // max(1, rows * cols))
    if latent.size != rows * cols * channels:
        raise ValueError(f"{latent.size} latent values do not fill a {rows}x{cols} grid of {channels} channels")
    grid = torch.from_numpy(latent).reshape(1, rows, cols, channels)
    patch = meta.get("latent_patch")
    extras: dict[str, Any] = {"grid_rows": [rows], "grid_cols": [cols],
                              "orig_height": [int(content[0])], "orig_width": [int(content[1])]}
    if patch:
        extras["patch"] = int(patch)
    return MultiScaleTokens(grids=[grid], patch_nums=tuple(int(p) for p in meta.get("patch_nums") or ()),
                            image_size=(int(content[0]), int(content[1])),
                            padded_size=(rows * int(patch), cols * int(patch)) if patch else None,
                            continuous=True, extras=extras)
