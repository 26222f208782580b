"""Token Parquet -> MultiScaleTokens, for looking at stored tokens (reports, demos, notebooks).

Training reads the same files through Ray Data with its own vectorised collate (pipeline/var);
this reader is the simple path: a few rows back into grids a tokenizer can decode.
"""

from __future__ import annotations

from typing import Any

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


def row_tokens(table: pa.Table, index: int, patch_nums: tuple[int, ...], groups: int = 1) -> MultiScaleTokens:
    """Row `index` of a token table as a batch of one."""
    flat = np.asarray(table["tokens"][index].values.to_numpy(zero_copy_only=False), dtype=np.int64)
    shapes = np.asarray(table["scale_shapes"][index].values.to_numpy(zero_copy_only=False)).reshape(-1, 2)
    if flat.size == 0:
        raise ValueError(f"row {index} holds no tokens (status {table['status'][index].as_py()!r})")
    t = torch.from_numpy(flat).reshape(1, -1, groups) if groups > 1 else torch.from_numpy(flat).reshape(1, -1)
    h, w = table["height_padded"][index].as_py(), table["width_padded"][index].as_py()
    return MultiScaleTokens.from_flat(t, [tuple(map(int, s)) for s in shapes], patch_nums,
                                      image_size=(h, w), padded_size=(h, w))
