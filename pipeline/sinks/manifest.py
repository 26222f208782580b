"""The per-shard commit record, and the one place that decides what is committed.

Protocol, per shard attempt (any number of attempts, on any actors or jobs, possibly at once, and
with any bytes: bf16 or another GPU type may encode the same shard differently):
  1. write the data under a name of this attempt's own: OUT/_attempts/<shard>@<attempt id>.parquet
     (temp + rename locally, one PUT on object stores);
  2. create OUT/_manifest/<shard>.json only if absent (hard link / If-None-Match: *). The attempt
     that creates it wins: the manifest names its attempt file and the sha256 of its bytes;
  3. the winner publishes its bytes as OUT/tokens/<shard>.parquet (a rename locally; a PUT of
     the bytes in hand and a DELETE of the attempt file on object stores).
A losing attempt deletes its own attempt file and counts as done: the shard has one committed
encoding. If its bytes differed (non-reproducible encoding) that is reported, not a failure.
Nothing ever writes tokens/<shard>.parquet but the manifest's winner or a repair that copies the
winner's attempt file after checking its sha256: the file third-party readers glob only ever
holds the committed bytes.

A crash after step 1 leaves an attempt file nobody reads (the shard is redone; the file is removed
once the shard is committed). A crash after step 2 leaves a manifest whose data is still in its
attempt file: planning (`plan_resume`) finds it unpublished and `ensure_published` repairs it.
A shard is done iff its manifest exists with the job's fingerprint and its data is published.

Readers (training, report, verify) never glob: `read_committed_set` gives the committed shards
of one job fingerprint, and names what it ignored (data without manifest, manifests of another
fingerprint, shards no longer in the job's input list). Durations, actor ids and timestamps live
in manifests, never in the data file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from pipeline.sinks.codebook import histogram_summary
from pipeline.sinks.writer import ATTEMPT_SEPARATOR, OutputLayout, attempt_file

MANIFEST_VERSION = 2
JOB_RECORD = "_job.json"
INPUTS_RECORD = "_inputs.json"
# Manifests are json.dumps(indent=1, sort_keys=True): a top-level key sits after a newline and one space.
TOP_LEVEL_FINGERPRINT = b'\n "fingerprint": "'

CREATED = "created"                    # this attempt's manifest decides the shard
COMMITTED_SAME = "committed_same"      # another attempt won, with the same bytes
COMMITTED_OTHER = "committed_other"    # another attempt won, with different bytes (non-reproducible)


class CommitConflict(RuntimeError):
    """A manifest for this shard exists but was written by a different job (another fingerprint)."""


# ---------------------------------------------------------------------------------- the record

def label_summary(labels: Iterable[int | None]) -> dict[str, int] | None:
    """min/max/count of the shard's labels (training checks the class count against them)."""
    values = [v for v in labels if v is not None]
    if not values:
        return None
    return {"min": int(min(values)), "max": int(max(values)), "count": len(values)}


def build_manifest(*, shard: str, input_url: str, data: bytes, rows: int, status_counts: dict[str, int],
                   samples: int, fingerprint: str, tokenizer_fingerprint: str, histogram: np.ndarray | None,
                   duration_s: float, attempt: int, attempt_id: str, worker: dict[str, Any],
                   labels: dict[str, int] | None = None, audit: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ok = status_counts.get("ok", 0)
    return {
        "manifest_version": MANIFEST_VERSION,
        "shard": shard,
        "input": input_url,
        "data_file": f"tokens/{shard}.parquet",
        "attempt_file": attempt_file(shard, attempt_id),
        "attempt_id": attempt_id,
        "fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "rows": rows,
        "samples": samples,
        "ok": ok,
        "failed": sum(status_counts.values()) - ok,
        "status_counts": dict(sorted(status_counts.items())),
        "labels": labels,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "duration_s": round(duration_s, 3),
        "committed_at": round(time.time(), 3),   # when the attempt went to commit (report timelines)
        "attempt": attempt,
        "worker": worker,
        "codebook": histogram_summary(histogram),
        "audit": audit or [],      # reconstruction audit: [{key, scale, of, psnr, ssim}] (runner/recon_audit.py)
    }


def manifest_text(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode()


def shard_of_path(path: str, suffix: str) -> str:
    """`.../_manifest/<shard>.json` or `.../tokens/<shard>.parquet` -> `<shard>`."""
    return path.rstrip("/").rsplit("/", 1)[-1][: -len(suffix)]


def parse_attempt_name(path: str) -> tuple[str, str] | None:
    """`.../_attempts/<shard>@<attempt id>.parquet` -> (shard, attempt id); None for anything else."""
    name = shard_of_path(path, ".parquet") if path.endswith(".parquet") else None
    if not name or ATTEMPT_SEPARATOR not in name:
        return None
    shard, attempt_id = name.rsplit(ATTEMPT_SEPARATOR, 1)
    return shard, attempt_id


# ---------------------------------------------------------------------------------- committing

def commit_shard(layout: OutputLayout, shard: str, data: bytes, manifest: dict[str, Any],
                 on_step: Callable[[str], None] | None = None) -> str:
    """Steps 1-3 above for one attempt; returns CREATED, COMMITTED_SAME or COMMITTED_OTHER.
    Raises CommitConflict when the shard belongs to another job's fingerprint.
    `on_step(name)` is called after each step (crash-injection tests)."""
    step = on_step or (lambda name: None)
    attempt_file = layout.join(manifest["attempt_file"])
    layout.put(attempt_file, data)
    step("attempt_written")
    if layout.create_if_absent(layout.manifest_path(shard), manifest_text(manifest)):
        step("manifest_created")
        layout.move(attempt_file, layout.data_path(shard), data)
        step("published")
        return CREATED
    layout.remove(attempt_file)  # lost: these bytes are never read by anyone
    step("attempt_removed")
    existing = read_manifest(layout, shard)
    if existing is None or existing.get("unreadable") or existing.get("fingerprint") != manifest["fingerprint"]:
        found = "an unreadable manifest" if existing and existing.get("unreadable") else (
            f"fingerprint {(existing or {}).get('fingerprint')}")
        raise CommitConflict(f"{layout.manifest_path(shard)} already exists with {found}, not this job's "
                             f"{manifest['fingerprint']}; is another job writing to {layout.url}?")
    ensure_published(layout, shard, existing)  # the winner may have died before its step 3
    return COMMITTED_SAME if existing.get("sha256") == manifest["sha256"] else COMMITTED_OTHER


def ensure_published(layout: OutputLayout, shard: str, manifest: dict[str, Any]) -> bool:
    """Make tokens/<shard>.parquet hold the manifest's bytes if it does not yet (the winner died
    between its steps 2 and 3). True when the data file is in place afterwards."""
    data_path = layout.data_path(shard)
    if _has_size(layout, data_path, manifest.get("bytes")):
        return True
    attempt_rel = manifest.get("attempt_file")
    if not attempt_rel:
        return False  # a version-1 manifest: its data file was written before the manifest
    attempt_file = layout.join(attempt_rel)
    try:
        data = layout.read_bytes(attempt_file)
    except FileNotFoundError:
        return _has_size(layout, data_path, manifest.get("bytes"))  # published meanwhile
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return False  # the attempt file is damaged: never publish bytes the manifest does not describe
    layout.move(attempt_file, data_path, data)
    return True


def _has_size(layout: OutputLayout, path: str, size: int | None) -> bool:
    try:
        info = layout.fs.info(path)
    except FileNotFoundError:
        return False
    return size is None or int(info.get("size", -1)) == int(size)


# ---------------------------------------------------------------------------------- reading

def read_manifest(layout: OutputLayout, shard: str) -> dict[str, Any] | None:
    """The shard's manifest; None when there is none. An unreadable one (not JSON, e.g. cut short
    on a store without atomic creates) is reported as {"unreadable": True}, never as absent."""
    try:
        raw = layout.read_bytes(layout.manifest_path(shard))
    except FileNotFoundError:
        return None
    return _parse(raw)


def _parse(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):
        return {"unreadable": True}
    return value if isinstance(value, dict) else {"unreadable": True}


def read_all_manifests(layout: OutputLayout, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """shard name -> manifest, for every manifest in the output or those of `names` (fetched
    concurrently on object stores); `iter_manifests` when they need not all be held at once."""
    return dict(iter_manifests(layout, names))


def iter_manifests(layout: OutputLayout, names: Iterable[str] | None = None,
                   chunk: int = 2000) -> Iterable[tuple[str, dict[str, Any]]]:
    """(shard, manifest) for every manifest (or those of `names`), fetched `chunk` at a time, so
    that a caller folding them never holds more than one chunk (a manifest with its codebook
    histogram is ~25 KB: a million of them would be tens of GB)."""
    items = sorted(_manifest_paths(layout, names).items())
    for start in range(0, len(items), chunk):
        part = dict(items[start:start + chunk])
        contents = layout.fs.cat(list(part.values()), on_error="return")
        for name, path in part.items():
            yield name, _parse(contents.get(path))


def _manifest_paths(layout: OutputLayout, names: Iterable[str] | None) -> dict[str, str]:
    by_name = {shard_of_path(p, ".json"): p for p in layout.list_dir(layout.manifest_dir, ".json")}
    if names is not None:
        wanted = set(names)
        by_name = {n: p for n, p in by_name.items() if n in wanted}
    return by_name


def manifest_fingerprints(layout: OutputLayout, names: Iterable[str] | None = None) -> dict[str, str | None]:
    """shard name -> the job fingerprint in its manifest (None: unreadable), for every manifest in
    the output, or only those of `names`. One listing of the manifest directory, then only the
    fingerprint of each manifest (its codebook histogram is most of its bytes) read concurrently:
    planning a resume over 100 000 committed shards takes seconds, not minutes."""
    by_name = _manifest_paths(layout, names)
    if not by_name:
        return {}
    if layout.is_local:
        # Chunks of paths per task: a future per file would cost more than reading it.
        paths = list(by_name.values())
        chunks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]
        with ThreadPoolExecutor(min(8, len(chunks), 2 * (os.cpu_count() or 1))) as pool:
            read = [fp for chunk in pool.map(_local_fingerprints, chunks) for fp in chunk]
        return dict(zip(by_name, read))
    contents = layout.fs.cat(list(by_name.values()), on_error="return")
    return {n: _fingerprint_of(contents.get(p)) for n, p in by_name.items()}


def _local_fingerprints(paths: list[str]) -> list[str | None]:
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
            out.append(_fingerprint_of(b"".join(parts) if len(parts) > 1 else parts[0]))
        except OSError:
            out.append(None)
    return out


def _fingerprint_of(raw: Any) -> str | None:
    if not isinstance(raw, (bytes, bytearray)):
        return None  # a read error returned by fs.cat
    at = raw.find(TOP_LEVEL_FINGERPRINT)
    if at >= 0 and raw[-64:].rstrip().endswith(b"\n}"):  # whole: the top-level object's own closing brace
        start = at + len(TOP_LEVEL_FINGERPRINT)
        end = raw.find(b'"', start)
        if end > start:
            return raw[start:end].decode("ascii", errors="replace")
    value = _parse(raw).get("fingerprint")  # written some other way: parse it all
    return value if isinstance(value, str) else None


def published_names(layout: OutputLayout) -> set[str]:
    """Shards whose data file exists (one listing of tokens/)."""
    return {shard_of_path(p, ".parquet") for p in layout.list_dir(layout.tokens_dir, ".parquet")}


# ---------------------------------------------------------------------------------- planning

@dataclass
class ResumePlan:
    todo: list                                         # shards (listing.Shard) still to encode
    unpublished: list[str] = field(default_factory=list)  # committed, data still in the attempt file
    done: int = 0


def plan_resume(layout: OutputLayout, shards: list, fingerprint: str) -> ResumePlan:
    """What a run over `shards` has left to do: shards without a manifest of this fingerprint are
    encoded; committed ones whose data file is missing are only published (`ensure_published`)."""
    committed = {n for n, fp in manifest_fingerprints(layout, [s.name for s in shards]).items() if fp == fingerprint}
    published = published_names(layout) if committed else set()
    todo = [s for s in shards if s.name not in committed]
    unpublished = sorted(committed - published)
    return ResumePlan(todo=todo, unpublished=unpublished, done=len(committed) - len(unpublished))


def repair_unpublished(layout: OutputLayout, names: list[str]) -> tuple[list[str], list[str]]:
    """Publish committed shards whose winner died before step 3: (repaired, unrepairable)."""
    manifests = read_all_manifests(layout, names)
    repaired, lost = [], []
    for name in names:
        (repaired if ensure_published(layout, name, manifests.get(name) or {}) else lost).append(name)
    return repaired, lost


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
    fingerprints = manifest_fingerprints(layout, shards)
    published = published_names(layout)
    settled = {s for s in shards if fingerprints.get(s) == fingerprint and s in published}
    removed = 0
    for path, parsed in files:
        if parsed and parsed[0] in settled:
            layout.remove(path)
            removed += 1
    for key, upload_id, parsed in uploads:
        if parsed and parsed[0] in settled:
            removed += int(layout.abort_multipart_upload(key, upload_id))
    return removed


# ---------------------------------------------------------------------------------- the committed set

@dataclass
class CommittedSet:
    """What a reader may read of one job output: the committed, published shards of its job
    fingerprint (in shard-name order), and what was found and ignored."""

    url: str
    fingerprint: str
    record: dict[str, Any]                         # OUT/_job.json
    manifests: dict[str, dict[str, Any]]           # shard -> manifest, committed and published
    layout: OutputLayout
    uncommitted: list[str] = field(default_factory=list)   # data file without manifest
    unpublished: list[str] = field(default_factory=list)   # manifest without data file (repair: rerun)
    foreign: list[str] = field(default_factory=list)       # manifest of another fingerprint
    orphans: list[str] = field(default_factory=list)       # committed, but not in the job's inputs

    def data_paths(self) -> list[str]:
        return [self.layout.data_path(name) for name in self.manifests]

    def ignored(self) -> str:
        """One line naming what was ignored, empty when nothing was."""
        parts = [f"{len(v)} {k} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                 for k, v in (("uncommitted data files", self.uncommitted),
                              ("committed shards without their data file", self.unpublished),
                              ("manifests of another job fingerprint", self.foreign),
                              ("shards no longer in the job's input", self.orphans)) if v]
        return "; ".join(parts)


def is_job_output(layout: OutputLayout) -> bool:
    return layout.exists(layout.join(JOB_RECORD))


def read_job_record(layout: OutputLayout) -> dict[str, Any]:
    return json.loads(layout.read_bytes(layout.join(JOB_RECORD)))


def read_input_names(layout: OutputLayout) -> set[str] | None:
    """The shard names of the job's latest input list (None when the output predates the record)."""
    try:
        return set(json.loads(layout.read_bytes(layout.join(INPUTS_RECORD)))["shards"])
    except FileNotFoundError:
        return None


def read_committed_set(layout: OutputLayout) -> CommittedSet:
    """The committed set of the job output at `layout` (which must hold _job.json)."""
    record = read_job_record(layout)
    fingerprint = record["fingerprint"]
    manifests = read_all_manifests(layout)
    published = published_names(layout)
    inputs = read_input_names(layout)
    out = CommittedSet(url=layout.url, fingerprint=fingerprint, record=record, manifests={}, layout=layout)
    for name in sorted(manifests):
        manifest = manifests[name]
        if manifest.get("fingerprint") != fingerprint:
            out.foreign.append(name)
        elif name not in published:
            out.unpublished.append(name)
        elif inputs is not None and name not in inputs:
            out.orphans.append(name)
        else:
            out.manifests[name] = manifest
    out.uncommitted = sorted(published - set(manifests))
    return out
