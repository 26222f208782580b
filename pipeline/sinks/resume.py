"""Before and after a run, on the driver: what is done, what must be redone, what to clean up.

A shard is done when its manifest has the job's fingerprint and its data file holds the bytes the
manifest describes. Planning checks the second half too, because files go missing and bits rot
after a commit:
  - size, always: one listing of tokens/ with sizes against each manifest's `bytes` (free);
  - sha256 with `--check-data hash`, which reads every committed data file; `auto` (the default)
    does that on local disks, where hashing runs at about 1-2 GB/s (ImageNet's 1.7 GB of tokens:
    about a second) and on object stores checks sizes only, where hashing means downloading every
    file again (benchmarks/RESULTS.md).
A committed shard whose data is missing or damaged is restored from the winner's attempt file when
that still holds the manifest's bytes, else encoded again: the re-encoding is published under the
existing manifest when its sha256 is the manifest's (sinks/manifest.py `ensure_published`), and
otherwise the shard is named as lost (non-zero exit), never silently replaced.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from pipeline.sinks.manifest import (manifest_paths, parse_manifest, data_sizes, ensure_published, parse_attempt_name,
                                     read_all_manifests)
from pipeline.sinks.writer import OutputLayout

CHECK_MODES = ("auto", "size", "hash")
HASH_THREADS = 4


# ---------------------------------------------------------------------------------- reading many manifests

class ManifestHead(NamedTuple):
    """The top-level fields of a manifest that planning needs (None: absent or unreadable)."""

    fingerprint: str | None
    bytes: int | None = None
    sha256: str | None = None


HEAD_FIELDS = ("fingerprint", "bytes", "sha256")


def manifest_heads(layout: OutputLayout, names: Iterable[str] | None = None) -> dict[str, ManifestHead]:
    """shard name -> ManifestHead, for every manifest in the output, or only those of `names`. One
    listing of the manifest directory, then only a few top-level fields of each manifest (its
    codebook histogram is most of its bytes) read concurrently: planning a resume over 100 000
    committed shards takes seconds, not minutes."""
    by_name = manifest_paths(layout, names)
    if not by_name:
        return {}
    if layout.is_local:
        # Chunks of paths per task: a future per file would cost more than reading it.
        paths = list(by_name.values())
        chunks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]
        with ThreadPoolExecutor(min(8, len(chunks), 2 * (os.cpu_count() or 1))) as pool:
            read = [head for chunk in pool.map(_local_heads, chunks) for head in chunk]
        return dict(zip(by_name, read))
    contents = layout.fs.cat(list(by_name.values()), on_error="return")
    return {n: _head_of(contents.get(p)) for n, p in by_name.items()}


def manifest_fingerprints(layout: OutputLayout, names: Iterable[str] | None = None) -> dict[str, str | None]:
    """shard name -> the job fingerprint in its manifest (None: unreadable); see manifest_heads."""
    return {name: head.fingerprint for name, head in manifest_heads(layout, names).items()}


def _local_heads(paths: list[str]) -> list[ManifestHead]:
    out = []
    for path in paths:
        try:  # os-level reads: half the cost of open().read() for small files
            fd = os.open(path, os.O_RDONLY)
            try:
                parts = [os.read(fd, 1 << 16)]
                while len(parts[-1]) == 1 << 16:
                    parts.append(os.read(fd, 1 << 16))
            finally:
                os.close(fd)
            out.append(_head_of(b"".join(parts) if len(parts) > 1 else parts[0]))
        except OSError:
            out.append(ManifestHead(None))
    return out


def _head_of(raw: Any) -> ManifestHead:
    if not isinstance(raw, (bytes, bytearray)):
        return ManifestHead(None)  # a read error returned by fs.cat
    if raw[-64:].rstrip().endswith(b"\n}"):  # whole: the top-level object's own closing brace
        values = [_top_level_scalar(raw, name) for name in HEAD_FIELDS]
        if isinstance(values[0], str):
            return _typed_head(*values)
    whole = parse_manifest(raw)  # written some other way: parse it all
    return _typed_head(*(whole.get(name) for name in HEAD_FIELDS))


# `manifest_text` writes json.dumps(indent=1, sort_keys=True): a top-level key sits after a newline
# and exactly one space (nested keys have more), and keys are sorted, so the codebook histogram
# (most of a manifest's bytes) lies between "bytes" and "fingerprint": each field is searched for
# from its nearer end, never across the histogram.
_FROM_END = {"fingerprint", "sha256"}


def _top_level_scalar(raw: bytes, name: str) -> Any:
    """A top-level string or integer field of a manifest written by `manifest_text`, without
    parsing the rest (None when absent or of another kind)."""
    key = b'\n "' + name.encode() + b'": '
    at = raw.rfind(key) if name in _FROM_END else raw.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = raw.find(b"\n", start)
    value = (raw[start:end] if end > 0 else raw[start:]).rstrip(b",")
    if value[:1] == b'"':
        return value[1:-1].decode("ascii", errors="replace") if value[-1:] == b'"' and b"\\" not in value else None
    return int(value) if value.isdigit() else None


def _typed_head(fingerprint: Any, size: Any, sha256: Any) -> ManifestHead:
    return ManifestHead(fingerprint if isinstance(fingerprint, str) else None,
                        size if isinstance(size, int) and not isinstance(size, bool) else None,
                        sha256 if isinstance(sha256, str) else None)


# ---------------------------------------------------------------------------------- planning

@dataclass
class ResumePlan:
    todo: list                                          # shards (listing.Shard) without a committed manifest
    damaged: dict[str, str] = field(default_factory=dict)   # committed, data missing or damaged -> what is wrong
    done: int = 0                                       # committed with intact data
    hashed: bool = False                                # whether data files were checked by sha256

    @property
    def missing(self) -> list[str]:
        return sorted(n for n, why in self.damaged.items() if why == MISSING)


MISSING = "data file missing"


def hash_checks(layout: OutputLayout, mode: str) -> bool:
    """Whether `mode` (CHECK_MODES) means reading every committed data file for its sha256."""
    if mode not in CHECK_MODES:
        raise ValueError(f"--check-data must be one of {', '.join(CHECK_MODES)}, not {mode!r}")
    return mode == "hash" or (mode == "auto" and layout.is_local)


def plan_resume(layout: OutputLayout, shards: list, fingerprint: str, check: str = "auto") -> ResumePlan:
    """What a run over `shards` has left to do (see the module doc), in the input's order."""
    heads = manifest_heads(layout, [s.name for s in shards])
    committed = {n: h for n, h in heads.items() if h.fingerprint == fingerprint}
    plan = ResumePlan(todo=[s for s in shards if s.name not in committed], hashed=hash_checks(layout, check))
    sizes = data_sizes(layout) if committed else {}
    for name, head in committed.items():
        if name not in sizes:
            plan.damaged[name] = MISSING
        elif head.bytes is not None and sizes[name] != head.bytes:
            plan.damaged[name] = f"{sizes[name]} bytes, its manifest says {head.bytes}"
    if plan.hashed:
        intact = [n for n in committed if n not in plan.damaged and committed[n].sha256]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            digests = dict(zip(intact, pool.map(lambda n: _file_sha256(layout, n), intact)))
        for name, digest in digests.items():
            if digest != committed[name].sha256:
                plan.damaged[name] = "sha256 differs from its manifest's" if digest else MISSING
    plan.done = len(committed) - len(plan.damaged)
    return plan


def _file_sha256(layout: OutputLayout, shard: str) -> str | None:
    try:
        if layout.is_local:  # streamed from the file: no copy of it in memory
            with open(layout.data_path(shard), "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        return hashlib.sha256(layout.read_bytes(layout.data_path(shard))).hexdigest()
    except FileNotFoundError:
        return None


def restore_data(layout: OutputLayout, names: list[str]) -> tuple[list[str], list[str]]:
    """Publish the manifests' own bytes for committed shards whose data is missing or damaged,
    from the winners' attempt files: (restored, to re-encode)."""
    manifests = read_all_manifests(layout, names)
    restored, redo = [], []
    for name in names:
        ok = ensure_published(layout, name, manifests.get(name) or {}, known_bad=True)
        (restored if ok else redo).append(name)
    return restored, redo


def clean_attempts(layout: OutputLayout, fingerprint: str) -> int:
    """Remove attempt files that can never matter again: those of shards committed with this
    job's fingerprint whose data is published (losers, and the winner's own leftover copy on a
    store without rename). Attempt files of uncommitted shards stay: one of them may still be on
    its way to winning. Interrupted multipart uploads of the same kind are aborted. Returns the count."""
    files = [(p, parse_attempt_name(p)) for p in layout.list_dir(layout.attempt_dir, ".parquet")]
    uploads = [(key, upload_id, parse_attempt_name(name)) for name, key, upload_id in layout.multipart_uploads()]
    shards = {parsed[0] for _, parsed in files if parsed} | {parsed[0] for _, _, parsed in uploads if parsed}
    if not shards:
        return 0
    heads = manifest_heads(layout, shards)
    sizes = data_sizes(layout)
    # Settled: committed by this job, and published at the manifest's size (a manifest's own
    # attempt file is the one copy left while its data file is missing or cut short).
    settled = {s for s in shards if s in heads and heads[s].fingerprint == fingerprint and s in sizes
               and heads[s].bytes in (None, sizes[s])}
    removed = 0
    for path, parsed in files:
        if parsed and parsed[0] in settled:
            layout.remove(path, settle=True)
            removed += 1
    for key, upload_id, parsed in uploads:
        if parsed and parsed[0] in settled:
            removed += int(layout.abort_multipart_upload(key, upload_id))
    return removed
