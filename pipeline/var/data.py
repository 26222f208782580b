"""Token Parquet (the tokenize job's output): the committed files, their checks, rows -> arrays.

The contract is the tokenize job's output schema (README, "Output layout and schema";
pipeline/sinks/schema.py): `tokens list<uint16|int32>` flattened small to large scale,
`label int32` (null = no label), `status` ("ok" or an error kind), and key-value
metadata `scaletok.*` describing the tokenizer that produced the file. Training only reads rows
with status "ok", and refuses files whose tokenizer, scale schedule or vocabulary differ from the
tokenizer the trainer rebuilds its inputs with.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.sinks.arrow_io import read_schema, read_table
from pipeline.sinks.integrity import DamagedDataError
from pipeline.sinks.manifest import JOB_RECORD, CommittedSet, is_job_output, read_committed_set
from pipeline.sinks.schema import decode_metadata
from pipeline.sinks.writer import OutputLayout

READ_COLUMNS = ["tokens", "label", "status"]   # plus "variant" where the files have it


class TokenDataError(ValueError):
    """Token files that cannot drive this training run (schema, schedule or tokenizer mismatch)."""


@dataclass(frozen=True)
class TokenSource:
    """The committed token files of one job (or of several outputs of one job fingerprint) and
    what produced them."""

    files: tuple[str, ...]        # paths as the filesystem sees them (no scheme for s3fs)
    filesystem: Any               # an fsspec filesystem
    metadata: dict[str, Any]      # scaletok.* metadata of the first file, JSON-decoded, prefix removed
    # Aligned with `files`: each file's commit record (rows, ok, status_counts, labels {min, max,
    # count} of the ok original rows, ...); empty dicts for a single file named directly.
    manifests: tuple[dict[str, Any], ...] = ()
    outputs: tuple[str, ...] = ()     # the job outputs the files come from
    ignored: str = ""                 # what the commit records excluded (logged by the caller)

    def manifest_of(self, index: int) -> dict[str, Any]:
        """The commit record of files[index] ({} when none travelled with the files: not checked)."""
        return self.manifests[index] if index < len(self.manifests) else {}

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.metadata["patch_nums"])

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums) * int(self.metadata.get("groups", 1) or 1)

    def label_range(self) -> tuple[int, int] | None:
        """(smallest, largest) label over the committed ok rows, from the manifests; None when no
        row has a label (or the manifests predate label records)."""
        ranges = [m["labels"] for m in self.manifests if isinstance(m.get("labels"), dict)]
        if not ranges:
            return None
        return min(r["min"] for r in ranges), max(r["max"] for r in ranges)


def _committed_part(url: str, storage_options: dict[str, Any] | None) -> tuple[CommittedSet | None, Any, str]:
    """(committed set, filesystem, path) for one --tokens URL: a job output (or its tokens/ folder);
    (None, fs, path) for a single Parquet file named on purpose."""
    layout = OutputLayout(url, storage_options)
    if is_job_output(layout):
        return read_committed_set(layout), layout.fs, layout.root
    if posixpath.basename(layout.root) == "tokens":
        parent = OutputLayout(posixpath.dirname(url.rstrip("/")), storage_options)
        if is_job_output(parent):
            return read_committed_set(parent), parent.fs, parent.root
    fs, path = layout.fs, layout.root
    if fs.isfile(path) and path.endswith(".parquet"):
        return None, fs, path
    if not fs.exists(path):
        raise TokenDataError(f"no token data at {url}")
    jobs = sorted(posixpath.dirname(p) for p in fs.glob(posixpath.join(path, "*", JOB_RECORD)))
    if jobs:
        names = ", ".join(posixpath.basename(j) for j in jobs[:5]) + (", ..." if len(jobs) > 5 else "")
        raise TokenDataError(
            f"{url} holds {len(jobs)} tokenize outputs ({names}), not one; train on one of them, or name the "
            f"ones you mean on purpose (--tokens {url.rstrip('/')}/{posixpath.basename(jobs[0])} --tokens ...): "
            f"they must agree on everything that decides tokens (one job fingerprint)")
    raise TokenDataError(f"{url} is not a tokenize output (no {JOB_RECORD}); point --tokens at the directory "
                         f"`scaletok tokenize --output` wrote, or at one .parquet file")


def open_token_source(urls: str | list[str] | tuple[str, ...],
                      storage_options: dict[str, Any] | None = None) -> TokenSource:
    """The committed token files of the job output(s) `urls` (each a job output, its tokens/
    folder, or one .parquet file), read through the manifests: data files without a manifest,
    manifests of another job fingerprint and shards no longer in the job's input are ignored and
    named in `TokenSource.ignored`. Several outputs must share one job fingerprint."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise TokenDataError("no --tokens given")
    files: list[str] = []
    manifests: list[dict[str, Any]] = []
    notes, fingerprints, fs = [], {}, None
    for url in urls:
        committed, part_fs, path = _committed_part(url, storage_options)
        fs = fs or part_fs
        if committed is None:
            files.append(path)
            manifests.append({})
            continue
        fingerprints[url] = committed.fingerprint
        if committed.unpublished:  # training on fewer images than were committed is a silent loss
            names = ", ".join(committed.unpublished[:3]) + (", ..." if len(committed.unpublished) > 3 else "")
            raise DamagedDataError(
                f"{url}: {len(committed.unpublished)} committed shard(s) without their data file ({names}); "
                f"rerun `scaletok tokenize` on this output to restore or redo them, or `scaletok verify` to "
                f"list them all")
        # A truncated file stops training here, on the driver, before any worker starts (and before
        # its footer is read: a cut-off footer says nothing of which file or why); the sha256 is
        # checked where each file is read whole.
        committed.check_sizes()
        files += committed.data_paths()
        manifests += list(committed.manifests.values())
        if committed.ignored():
            notes.append(f"{url}: ignored {committed.ignored()}")
    if len(set(fingerprints.values())) > 1:
        raise TokenDataError("the token outputs come from different jobs (job fingerprints "
                             + ", ".join(f"{u}: {fp}" for u, fp in fingerprints.items())
                             + "); train on outputs whose token settings agree")
    if not files:
        raise TokenDataError(f"no committed token files in {', '.join(urls)}"
                             + (f" ({'; '.join(notes)})" if notes else ""))
    first = decode_metadata(read_schema(fs, files[0]))
    if not first or "patch_nums" not in first:
        raise TokenDataError(f"{files[0]} has no scaletok metadata (not written by the tokenize job?)")
    return TokenSource(files=tuple(files), filesystem=fs, metadata=first, manifests=tuple(manifests),
                       outputs=tuple(urls), ignored="; ".join(notes))


def classes_of(source: TokenSource) -> tuple[int | None, list[str] | None, str]:
    """(number of classes, their names, how that was decided) from the data: the class list the
    job recorded (class folders, a ClassLabel), else the largest label + 1, else None (no labels)."""
    names = source.metadata.get("class_names")
    if isinstance(names, list) and names:
        return len(names), [str(n) for n in names], f"{len(names)} classes named by the token files"
    found = source.label_range()
    if found is not None:
        return found[1] + 1, None, f"{found[1] + 1} classes (largest label {found[1]} + 1)"
    return None, None, "no labels in the token files"


def check_labels(source: TokenSource, num_classes: int) -> None:
    """Labels outside 0..num_classes-1 stop training at its start, not at the step that meets them."""
    found = source.label_range()
    if found is not None and (found[0] < 0 or found[1] >= num_classes):
        raise TokenDataError(f"the token files hold labels {found[0]}..{found[1]}, outside the model's "
                             f"{num_classes} classes (0..{num_classes - 1}); set --var-config num_classes="
                             f"{found[1] + 1} or fix the labels")


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
        problems.append(f"tokenizer fingerprint {meta['fingerprint']} (files) vs {tokenizer.fingerprint()} (trainer): "
                        "different weights, config, preprocessing or precision")
    if problems:
        raise TokenDataError(f"{source} was not produced by the tokenizer given to the trainer:\n  "
                             + "\n  ".join(problems))


def collate_arrow(table: pa.Table, seq_len: int, null_label: int) -> dict[str, torch.Tensor]:
    """Arrow batch -> {"tokens": (B, L) int64, "labels": (B,) int64} without Python loops.

    Missing labels become `null_label` (the unconditional class)."""
    out = torch.from_numpy(tokens_array(table, seq_len).astype(np.int64, copy=False))
    return {"tokens": out, "labels": torch.from_numpy(labels_array(table, null_label))}


def tokens_array(table: pa.Table, seq_len: int) -> np.ndarray:
    """The `tokens` column as a (B, seq_len) array of its stored dtype (uint16 / int32)."""
    tokens = table.column("tokens").combine_chunks()
    if isinstance(tokens, pa.ChunkedArray):  # empty table
        tokens = pa.concat_arrays(tokens.chunks) if tokens.num_chunks else pa.array([], pa.list_(pa.uint16()))
    b = len(tokens)
    lengths = pc.list_value_length(tokens)
    if b and (pc.min(lengths).as_py() != seq_len or pc.max(lengths).as_py() != seq_len):
        raise TokenDataError(f"token rows of {pc.min(lengths).as_py()}..{pc.max(lengths).as_py()} tokens; "
                             f"the scale schedule needs exactly {seq_len} (VAR trains on one square schedule: "
                             "tokenize with --image-policy center-crop)")
    return tokens.flatten().to_numpy(zero_copy_only=False).reshape(b, seq_len)


def labels_array(table: pa.Table, null_label: int) -> np.ndarray:
    """The `label` column as int64, missing labels as `null_label` (the unconditional class)."""
    b = table.num_rows
    labels = table.column("label").combine_chunks() if "label" in table.column_names else pa.nulls(b, pa.int32())
    labels = pc.fill_null(labels.cast(pa.int64()), null_label).to_numpy(zero_copy_only=False)
    return np.array(labels, dtype=np.int64)  # a writable copy


def count_ok_rows(source: TokenSource) -> int:
    """Rows with status "ok" across all files (decodes only the status column; each file is
    fetched whole and checked against its manifest, see pipeline/sinks/arrow_io.py)."""
    total = 0
    for i, f in enumerate(source.files):
        status = read_table(source.filesystem, f, columns=["status"], manifest=source.manifest_of(i)).column("status")
        total += int(pc.sum(pc.equal(status, "ok")).as_py() or 0)
    return total
