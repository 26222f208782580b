"""Token Parquet (the tokenize job's output) -> Ray Dataset -> (B, L) token batches.

The contract is the tokenize job's output schema (README, "Output layout and schema";
pipeline/sinks/schema.py): `tokens list<uint16|int32>` flattened small to large scale,
`label int32` (null = no label), `status` ("ok" or an error kind), and key-value
metadata `scaletok.*` describing the tokenizer that produced the file. Training only reads rows
with status "ok", and refuses files whose tokenizer, scale schedule or vocabulary differ from the
tokenizer the trainer rebuilds its inputs with.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.sinks.arrow_io import read_schema, read_table

META_PREFIX = "scaletok."
READ_COLUMNS = ["tokens", "label", "status"]


class TokenDataError(ValueError):
    """Token files that cannot drive this training run (schema, schedule or tokenizer mismatch)."""


@dataclass(frozen=True)
class TokenSource:
    """Where the token Parquet lives and what produced it."""

    files: tuple[str, ...]        # paths as the filesystem sees them (no scheme for s3fs)
    filesystem: Any               # an fsspec filesystem
    metadata: dict[str, Any]      # scaletok.* metadata of the first file, JSON-decoded, prefix removed

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.metadata["patch_nums"])

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums) * int(self.metadata.get("groups", 1) or 1)


def _filesystem(url: str, storage_options: dict[str, Any] | None):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


def decode_metadata(schema_metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (schema_metadata or {}).items():
        key = k.decode()
        if key.startswith(META_PREFIX):
            text = v.decode()
            try:
                out[key[len(META_PREFIX):]] = json.loads(text)
            except json.JSONDecodeError:
                out[key[len(META_PREFIX):]] = text
    return out


def open_token_source(url: str, storage_options: dict[str, Any] | None = None) -> TokenSource:
    """List the Parquet files under `url` (a file, a directory, or a job output holding tokens/)
    and read their scaletok metadata; every file must come from the same tokenizer."""
    fs, path = _filesystem(url, storage_options)
    if fs.isdir(path) and fs.isdir(posixpath.join(path, "tokens")):
        path = posixpath.join(path, "tokens")
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    elif fs.exists(path):
        files = [path]
    else:
        raise TokenDataError(f"no token data at {url}")
    if not files:
        raise TokenDataError(f"no .parquet files under {url}")
    metas = []
    for f in files:
        metas.append(decode_metadata(read_schema(fs, f).metadata))
    first = metas[0]
    if not first or "patch_nums" not in first:
        raise TokenDataError(f"{files[0]} has no scaletok metadata (not written by the tokenize job?)")
    for f, m in zip(files[1:], metas[1:]):
        for key in ("tokenizer", "fingerprint", "patch_nums", "vocab_size", "groups"):
            if m.get(key) != first.get(key):
                raise TokenDataError(f"token files disagree on {key}: {files[0]} has {first.get(key)!r}, "
                                     f"{f} has {m.get(key)!r}; train on one tokenizer's output at a time")
    return TokenSource(files=tuple(files), filesystem=fs, metadata=first)


def check_tokenizer(meta: dict[str, Any], tokenizer: Any, *, source: str = "token data") -> None:
    """Raise TokenDataError if the files were not produced by `tokenizer` (name, vocab, weights).

    The scale schedule is a setting of the tokenize job (not of the tokenizer): the model is built
    for the files' schedule, which only has to end at the latent grid of the tokenizer."""
    problems = []
    if meta.get("tokenizer") not in (None, tokenizer.name):
        problems.append(f"tokenizer {meta.get('tokenizer')!r} (files) vs {tokenizer.name!r} (trainer)")
    if meta.get("scale_superset"):
        problems.append("the files store a scale superset (FlexVAR-style); VAR training needs one fixed schedule")
    if meta.get("vocab_size") is not None and int(meta["vocab_size"]) != int(tokenizer.vocab_size):
        problems.append(f"vocab_size {meta['vocab_size']} (files) vs {tokenizer.vocab_size} (trainer)")
    if meta.get("fingerprint") is not None and meta["fingerprint"] != tokenizer.fingerprint():
        problems.append(f"fingerprint {meta['fingerprint']} (files) vs {tokenizer.fingerprint()} (trainer): "
                        "different weights, config, preprocessing or precision")
    if problems:
        raise TokenDataError(f"{source} was not produced by the tokenizer given to the trainer:\n  "
                             + "\n  ".join(problems))


def token_dataset(source: TokenSource, *, shuffle_files: bool = False):
    """A Ray Dataset of the usable rows (status == "ok") with only the columns training needs."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.data.expressions import col

    ds = ray.data.read_parquet(list(source.files), filesystem=PyFileSystem(FSSpecHandler(source.filesystem)),
                               columns=READ_COLUMNS, shuffle="files" if shuffle_files else None)
    return ds.filter(expr=col("status") == "ok")


def collate_arrow(table: pa.Table, seq_len: int, null_label: int) -> dict[str, torch.Tensor]:
    """Arrow batch -> {"tokens": (B, L) int64, "labels": (B,) int64} without Python loops.

    Missing labels become `null_label` (the unconditional class)."""
    tokens = table.column("tokens").combine_chunks()
    if isinstance(tokens, pa.ChunkedArray):  # empty table
        tokens = pa.concat_arrays(tokens.chunks) if tokens.num_chunks else pa.array([], pa.list_(pa.uint16()))
    b = len(tokens)
    lengths = pc.list_value_length(tokens)
    if b and (pc.min(lengths).as_py() != seq_len or pc.max(lengths).as_py() != seq_len):
        raise TokenDataError(f"token rows of {pc.min(lengths).as_py()}..{pc.max(lengths).as_py()} tokens; "
                             f"the scale schedule needs exactly {seq_len} (VAR trains on one square schedule: "
                             "tokenize with --image-policy center-crop)")
    flat = tokens.flatten().to_numpy(zero_copy_only=False)
    out = torch.from_numpy(flat.astype(np.int64, copy=False)).view(b, seq_len)
    labels = table.column("label").combine_chunks() if "label" in table.column_names else pa.nulls(b, pa.int32())
    labels = pc.fill_null(labels.cast(pa.int64()), null_label).to_numpy(zero_copy_only=False)
    return {"tokens": out, "labels": torch.from_numpy(np.array(labels, dtype=np.int64))}  # writable copy


def make_collate(seq_len: int, null_label: int):
    """A Ray `ArrowBatchCollateFn` (iter_torch_batches hands it the pyarrow Table of a batch)."""
    from ray.data.collate_fn import ArrowBatchCollateFn

    class TokenCollate(ArrowBatchCollateFn):
        def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
            return collate_arrow(batch, seq_len, null_label)

    return TokenCollate()


def count_ok_rows(source: TokenSource) -> int:
    """Rows with status "ok" across all files (decodes only the status column; each file is
    fetched whole, see pipeline/sinks/arrow_io.py)."""
    total = 0
    for f in source.files:
        status = read_table(source.filesystem, f, columns=["status"]).column("status")
        total += int(pc.sum(pc.equal(status, "ok")).as_py() or 0)
    return total
