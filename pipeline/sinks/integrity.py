"""Does a committed data file still hold the bytes its manifest describes?

A token file can be damaged after its commit (a flipped bit on disk or in transit, a copy cut
short). About 7 % of single-byte flips in a token Parquet file still parse, with changed values,
so a reader that only parses would train on (or report) altered tokens without a word. Every
reader that fetches a data file whole therefore checks it against its manifest (`bytes`, then
`sha256`, as `manifest.build_manifest` wrote them) before parsing it; a reader that only has a
listing checks the sizes (`check_size`), which catches truncation before anything is read.

The checks are pure and import only the standard library: anything from pipeline/sinks upwards
may use them (training, the report, the tokenize job's resume check).
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any, Mapping

# What a reader needs of a manifest to check its data file (the rest, e.g. the codebook
# histogram, is most of a manifest's bytes and need not travel to Ray workers).
INTEGRITY_KEYS = ("shard", "bytes", "sha256")
WHAT_TO_DO = ("rerun `scaletok tokenize` on this output to redo the shard (it detects damaged shards), "
              "or `scaletok verify` to list them all")


class DamagedDataError(ValueError):
    """A committed data file whose bytes differ from its manifest's record (size or sha256).
    The message is one line naming the file and what to do."""


def integrity_record(manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of `manifest` the checks use ({} for none: such a file is not checked)."""
    return {k: manifest[k] for k in INTEGRITY_KEYS if k in (manifest or {})}


def is_checkable(manifest: Mapping[str, Any] | None) -> bool:
    """Only a manifest with a sha256 describes its file; a file named directly (not through a job
    output) comes with an empty one and is read as it is."""
    return bool(manifest) and bool(manifest.get("sha256"))


def manifest_name(manifest: Mapping[str, Any], path: str) -> str:
    """`_manifest/<shard>.json`, the record the message points at."""
    shard = manifest.get("shard") or posixpath.basename(path.rstrip("/")).removesuffix(".parquet")
    return f"_manifest/{shard}.json"


def size_problem(size: int, manifest: Mapping[str, Any], path: str) -> str | None:
    expected = manifest.get("bytes")
    if expected is None or int(size) == int(expected):
        return None
    return f"{path}: damaged: {int(size)} bytes, its manifest ({manifest_name(manifest, path)}) says {int(expected)}"


def check_size(size: int, manifest: Mapping[str, Any], path: str) -> None:
    """Raise DamagedDataError if a listed size differs from the manifest's `bytes` (truncation,
    found without reading the file)."""
    if not is_checkable(manifest):
        return
    problem = size_problem(size, manifest, path)
    if problem:
        raise DamagedDataError(f"{problem}; {WHAT_TO_DO}")


def check_data(data: bytes, manifest: Mapping[str, Any], path: str) -> None:
    """Raise DamagedDataError unless `data` (the whole file at `path`) is what `manifest` recorded:
    the size first (free, and says more about a truncation), then the sha256."""
    if not is_checkable(manifest):
        return
    problem = size_problem(len(data), manifest, path)
    if problem is None:
        digest = hashlib.sha256(data).hexdigest()  # releases the GIL: readers may hash in threads
        expected = str(manifest["sha256"])
        if digest != expected:
            problem = f"{path}: damaged: sha256 {digest[:12]} differs from its manifest's {expected[:12]}"
    if problem:
        raise DamagedDataError(f"{problem}; {WHAT_TO_DO}")
