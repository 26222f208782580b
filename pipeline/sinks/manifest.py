"""The per-shard commit record and the exactly-once protocol built on it.

Protocol, per shard attempt (any number of attempts, on any actors, possibly concurrent):
  1. write OUT/tokens/<shard>.parquet whole (temp + rename locally, one PUT on object stores);
     every attempt writes the same bytes, so overwriting an earlier attempt's file is harmless;
  2. create OUT/_manifest/<shard>.json only if absent (hard link / If-None-Match).
A shard is done iff its manifest exists and carries the job's fingerprint. If step 2 finds a
manifest already there, the attempt checks it has the same fingerprint and data checksum and
counts as done too; anything else is an error (two different jobs writing one directory).

Durations, actor ids and timestamps live here, never in the data file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

import numpy as np

from pipeline.sinks.writer import OutputLayout

MANIFEST_VERSION = 1


class CommitConflict(RuntimeError):
    """A manifest for this shard exists but was written by a different job or data."""


def histogram_summary(hist: np.ndarray | None) -> dict[str, Any] | None:
    """Codebook usage of one shard: counts (compact, for merging), used codes, perplexity.
    None without a codebook (continuous tokenizers: an empty histogram)."""
    if hist is None:
        return None
    hist = np.asarray(hist, dtype=np.int64)
    if hist.size == 0:
        return None
    total = int(hist.sum())
    return {
        "vocab_size": int(hist.size),
        "tokens": total,
        "used_codes": int((hist > 0).sum()),
        "perplexity": perplexity(hist),
        "counts_b64_u32le": base64.b64encode(hist.astype("<u4").tobytes()).decode(),
    }


def histogram_from_summary(summary: dict[str, Any] | None) -> np.ndarray | None:
    if not summary or "counts_b64_u32le" not in summary:
        return None
    return np.frombuffer(base64.b64decode(summary["counts_b64_u32le"]), dtype="<u4").astype(np.int64)


def perplexity(hist: np.ndarray) -> float:
    total = float(hist.sum())
    if total <= 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(math.exp(-float((p * np.log(p)).sum())))


def build_manifest(*, shard: str, input_url: str, data_file: str, data: bytes, rows: int,
                   status_counts: dict[str, int], samples: int, fingerprint: str,
                   tokenizer_fingerprint: str, histogram: np.ndarray | None, duration_s: float,
                   attempt: int, worker: dict[str, Any]) -> dict[str, Any]:
    ok = status_counts.get("ok", 0)
    return {
        "manifest_version": MANIFEST_VERSION,
        "shard": shard,
        "input": input_url,
        "data_file": data_file,
        "fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "rows": rows,
        "samples": samples,
        "ok": ok,
        "failed": sum(status_counts.values()) - ok,
        "status_counts": dict(sorted(status_counts.items())),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "duration_s": round(duration_s, 3),
        "attempt": attempt,
        "worker": worker,
        "codebook": histogram_summary(histogram),
    }


def commit_shard(layout: OutputLayout, shard: str, data: bytes, manifest: dict[str, Any]) -> bool:
    """Steps 1 and 2 above. Returns True if this attempt created the manifest, False if the shard
    was already committed by this job. Raises CommitConflict otherwise.

    A retry that finds the shard committed leaves the data file alone: the manifest's checksum
    describes the bytes that are there, and rewriting them would break that if encoding were not
    bit-reproducible (bf16 or non-deterministic GPU kernels)."""
    existing = read_manifest(layout, shard)
    if existing is None:
        layout.put(layout.data_path(shard), data)
        text = json.dumps(manifest, indent=1, sort_keys=True).encode()
        if layout.create_if_absent(layout.manifest_path(shard), text):
            return True
        existing = read_manifest(layout, shard)  # another attempt committed between the two steps
    if existing is None or existing.get("fingerprint") != manifest["fingerprint"]:
        raise CommitConflict(f"{layout.manifest_path(shard)} already exists with a different fingerprint; "
                             f"is another job writing to {layout.url}?")
    if existing.get("sha256") != manifest["sha256"]:
        raise CommitConflict(
            f"{layout.manifest_path(shard)}: two attempts of the same job encoded {shard} to different bytes "
            f"(sha256 {existing.get('sha256')} vs {manifest['sha256']}); the encoding is not bit-reproducible "
            f"on these workers (bf16, TF32 or non-deterministic kernels). Rerun with --precision fp32, or "
            f"`scaletok verify` to check the committed file against its manifest.")
    return False


def read_manifest(layout: OutputLayout, shard: str) -> dict[str, Any] | None:
    """The shard's manifest; None when there is none. An unreadable one (not JSON, e.g. cut short
    on a store without atomic creates) is reported as {"unreadable": True}, never as absent."""
    try:
        raw = layout.read_bytes(layout.manifest_path(shard))
    except FileNotFoundError:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"unreadable": True}
    return value if isinstance(value, dict) else {"unreadable": True}


def read_all_manifests(layout: OutputLayout) -> dict[str, dict[str, Any]]:
    """shard name -> manifest, for every manifest in the output (fetched concurrently on S3)."""
    paths = layout.list_dir(layout.manifest_dir, ".json")
    if not paths:
        return {}
    contents = layout.fs.cat(paths, on_error="omit") if len(paths) > 1 else {paths[0]: layout.read_bytes(paths[0])}
    out = {}
    for path, raw in contents.items():
        name = path.rstrip("/").rsplit("/", 1)[-1][: -len(".json")]
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = {"unreadable": True}
    return out
