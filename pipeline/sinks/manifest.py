"""The per-shard commit record, and the one place that decides what is committed.

Protocol, per shard attempt (any number of attempts, on any actors or jobs, possibly at once, and
with any bytes: bf16 or another GPU type may encode the same shard differently):
  1. write the data under a name of this attempt's own: OUT/_attempts/<shard>@<attempt id>.parquet
     (temp + rename locally, one PUT on object stores);
  2. create OUT/_manifest/<shard>.json only if absent (hard link / If-None-Match: *). The attempt
     whose manifest is there wins: the manifest names its attempt id and file and the sha256 of
     its bytes;
  3. the winner publishes its bytes as OUT/tokens/<shard>.parquet (a rename locally; a PUT of
     the bytes in hand and a DELETE of the attempt file on object stores).
A losing attempt deletes its own attempt file (never one a manifest names) and counts as done:
the shard has one committed encoding. If its bytes differed (non-reproducible encoding) that is
reported, not a failure. Nothing ever writes tokens/<shard>.parquet but the winner, or a repair
that writes bytes whose sha256 is the manifest's (the winner's attempt file, or a re-encoding
that came out identical): the file third-party readers glob only ever holds the committed bytes.

Requests whose outcome is unknown (a response cut after the store applied the request, retries
exhausted) are settled by reading, never guessed (sinks/writer.py): a create answered "exists"
is ours when the object holds our bytes (manifests are unique per attempt), so the retry of our
own cut create is not taken for a lost race.

A crash after step 1 leaves an attempt file nobody reads (the shard is redone; the file is removed
once the shard is committed). A crash after step 2 leaves a manifest whose data is still in its
attempt file: planning (sinks/resume.py) finds it and publishes it. A data file that went missing
or was damaged later is found by planning too and redone (see resume.py).
A shard is done iff its manifest exists with the job's fingerprint and its data is published intact.

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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from pipeline.sinks.codebook import histogram_summary
from pipeline.sinks.integrity import check_size
from pipeline.sinks.writer import ATTEMPT_SEPARATOR, OutputLayout, attempt_file

MANIFEST_VERSION = 2
JOB_RECORD = "_job.json"
INPUTS_RECORD = "_inputs.json"

CREATED = "created"                    # this attempt's manifest decides the shard
COMMITTED_SAME = "committed_same"      # another attempt won, with the same bytes
COMMITTED_OTHER = "committed_other"    # another attempt won, with different bytes (non-reproducible)
LOST = "lost"                          # committed earlier, its bytes are gone everywhere, and this
                                       # attempt's differ: the committed encoding cannot be restored


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
    """Steps 1-3 above for one attempt; returns CREATED, COMMITTED_SAME, COMMITTED_OTHER or LOST.
    Raises CommitConflict when the shard belongs to another job's fingerprint.
    `on_step(name)` is called after each step (crash-injection tests)."""
    step = on_step or (lambda name: None)
    attempt_path = layout.join(manifest["attempt_file"])
    layout.put(attempt_path, data)
    step("attempt_written")
    if layout.create_if_absent(layout.manifest_path(shard), manifest_text(manifest)):
        step("manifest_created")
        layout.move(attempt_path, layout.data_path(shard), data)
        step("published")
        return CREATED
    existing = read_manifest(layout, shard)
    if existing is None or existing.get("unreadable") or existing.get("fingerprint") != manifest["fingerprint"]:
        found = "an unreadable manifest" if existing and existing.get("unreadable") else (
            f"fingerprint {(existing or {}).get('fingerprint')}" if existing else "no manifest on reading it back")
        raise CommitConflict(f"{layout.manifest_path(shard)} already exists with {found}, not this job's "
                             f"{manifest['fingerprint']}; is another job writing to {layout.url}?")
    if existing.get("attempt_id") == manifest["attempt_id"]:  # ours after all (written some other way)
        layout.move(attempt_path, layout.data_path(shard), data)
        return CREATED
    # Another attempt's manifest decides; it never names this attempt's file, which can go.
    layout.remove(attempt_path, settle=True)
    step("attempt_removed")
    if not ensure_published(layout, shard, existing, candidate=data):
        return LOST
    return COMMITTED_SAME if existing.get("sha256") == manifest["sha256"] else COMMITTED_OTHER


def ensure_published(layout: OutputLayout, shard: str, manifest: dict[str, Any], candidate: bytes | None = None,
                     known_bad: bool = False) -> bool:
    """Make tokens/<shard>.parquet hold the bytes `manifest` describes; True when it does afterwards.

    The data file is taken as it is when its size (and, given a `candidate` to compare, its
    sha256) match, unless `known_bad`. Else the bytes come from the winner's attempt file (the
    winner died between its steps 2 and 3) or from `candidate` (a re-encoding of the shard), each
    only when its sha256 is the manifest's: nothing the manifest does not describe is published."""
    data_path = layout.data_path(shard)
    if not known_bad and data_intact(layout, data_path, manifest, hash_check=candidate is not None):
        return True
    attempt_rel = manifest.get("attempt_file")
    if attempt_rel:
        attempt_path = layout.join(attempt_rel)
        try:
            kept = layout.read_bytes(attempt_path)
        except FileNotFoundError:
            kept = None
        if kept is not None and _sha256(kept) == manifest.get("sha256"):
            layout.move(attempt_path, data_path, kept)
            return True
    if candidate is not None and _sha256(candidate) == manifest.get("sha256"):
        layout.put(data_path, candidate)
        return True
    return not known_bad and data_intact(layout, data_path, manifest, hash_check=False)  # published meanwhile


def data_intact(layout: OutputLayout, path: str, manifest: dict[str, Any], hash_check: bool) -> bool:
    """Whether `path` holds the manifest's bytes: its size, and with `hash_check` its sha256."""
    try:
        size = int(layout.fs.info(path).get("size", -1))
    except FileNotFoundError:
        return False
    if manifest.get("bytes") is not None and size != int(manifest["bytes"]):
        return False
    if not hash_check or not manifest.get("sha256"):
        return True
    try:
        return _sha256(layout.read_bytes(path)) == manifest["sha256"]
    except FileNotFoundError:
        return False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------- reading

def read_manifest(layout: OutputLayout, shard: str) -> dict[str, Any] | None:
    """The shard's manifest; None when there is none. An unreadable one (not JSON, e.g. cut short
    on a store without atomic creates) is reported as {"unreadable": True}, never as absent."""
    try:
        raw = layout.read_bytes(layout.manifest_path(shard))
    except FileNotFoundError:
        return None
    return parse_manifest(raw)


def parse_manifest(raw: Any) -> dict[str, Any]:
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
    items = sorted(manifest_paths(layout, names).items())
    for start in range(0, len(items), chunk):
        part = dict(items[start:start + chunk])
        contents = layout.fs.cat(list(part.values()), on_error="return")
        for name, path in part.items():
            yield name, parse_manifest(contents.get(path))


def manifest_paths(layout: OutputLayout, names: Iterable[str] | None) -> dict[str, str]:
    by_name = {shard_of_path(p, ".json"): p for p in layout.list_dir(layout.manifest_dir, ".json")}
    if names is not None:
        wanted = set(names)
        by_name = {n: p for n, p in by_name.items() if n in wanted}
    return by_name


def data_sizes(layout: OutputLayout) -> dict[str, int]:
    """shard -> size of its published data file (one listing of tokens/ with sizes)."""
    if layout.is_local:  # os.scandir: a third of fsspec's cost per entry (100 000 files: 0.5 s)
        try:
            with os.scandir(layout.tokens_dir) as entries:
                return {e.name[:-len(".parquet")]: e.stat().st_size for e in entries
                        if e.name.endswith(".parquet") and e.is_file()}
        except FileNotFoundError:
            return {}
    layout.fs.invalidate_cache()
    try:
        entries = layout.fs.ls(layout.tokens_dir, detail=True)
    except FileNotFoundError:
        return {}
    return {shard_of_path(e["name"], ".parquet"): int(e.get("size") or 0) for e in entries
            if e["name"].endswith(".parquet") and e.get("type", "file") == "file"}


def check_data_sizes(layout: OutputLayout, manifests: dict[str, dict[str, Any]], sizes: dict[str, int]) -> None:
    """integrity.DamagedDataError for the first data file (in shard order) whose listed size
    (`data_sizes`) differs from its manifest's `bytes`; files not listed are not checked here."""
    for name in sorted(manifests):
        if name in sizes:
            check_size(sizes[name], manifests[name], layout.data_path(name))


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
    sizes: dict[str, int] = field(default_factory=dict)    # shard -> listed size of its data file

    def check_sizes(self) -> None:
        """integrity.DamagedDataError for the first committed data file whose listed size is not
        its manifest's (a truncated file, found before anything reads it)."""
        check_data_sizes(self.layout, self.manifests, self.sizes)

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
    sizes = data_sizes(layout)  # one listing: which shards are published, and their sizes
    published = set(sizes)
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
            out.sizes[name] = sizes[name]
    out.uncommitted = sorted(published - set(manifests))
    return out
