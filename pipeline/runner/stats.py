"""OUT/_stats.json: job-level totals over every committed shard of the job (this run and earlier
ones), codebook usage and perplexity per shard and merged, and this run's throughput and
per-actor utilisation. Durations live here and in manifests, never in the data files."""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np

from pipeline.runner.recon_audit import AuditFold
from pipeline.runner.scheduler import ScheduleOutcome
from pipeline.sinks.codebook import histogram_from_summary, perplexity
from pipeline.sources.listing import Shard


PER_SHARD_LIMIT = 10_000   # above this many shards _stats.json leaves per-shard figures to the manifests


def build_stats(shards: list[Shard], manifests: Iterable[tuple[str, dict[str, Any]]] | dict[str, dict[str, Any]],
                fingerprint: str, outcome: ScheduleOutcome | None, wall_s: float, skipped: int, repaired: int = 0,
                cleaned: int = 0, data_sizes: dict[str, int] | None = None,
                redone: list[str] | None = None) -> dict[str, Any]:
    """`manifests`: (shard, manifest) pairs, streamed (`iter_manifests`): nothing here holds more
    than one chunk of manifests, so the end of a job over a million shards stays in bounded memory.
    `data_sizes` (shard -> size of tokens/<shard>.parquet, from the store): a manifest whose data
    file is missing or of another size does not count as committed. `redone`: committed shards
    whose damaged or missing data was encoded again and published this run."""
    wanted = {s.name for s in shards}
    pairs = manifests.items() if isinstance(manifests, dict) else manifests
    status_counts: dict[str, int] = {}
    merged: np.ndarray | None = None
    per_shard: dict[str, dict[str, Any]] = {}
    committed: set[str] = set()
    unpublished: list[str] = []
    rows = size = 0
    audit = AuditFold()
    for name, m in pairs:
        if name not in wanted or m.get("fingerprint") != fingerprint:
            continue
        if data_sizes is not None and (name not in data_sizes or (
                m.get("bytes") is not None and data_sizes[name] != m["bytes"])):
            unpublished.append(name)
            continue
        committed.add(name)
        rows += int(m.get("rows") or 0)
        size += int(m.get("bytes") or 0)
        for status, n in m.get("status_counts", {}).items():
            status_counts[status] = status_counts.get(status, 0) + n
        hist = histogram_from_summary(m.get("codebook"))
        if hist is not None:
            merged = hist.copy() if merged is None else merged + hist
        audit.add(name, m.get("audit"))
        if len(shards) <= PER_SHARD_LIMIT:
            cb = m.get("codebook") or {}
            per_shard[name] = {"rows": m.get("rows"), "samples": m.get("samples"), "ok": m.get("ok"),
                               "failed": m.get("failed"), "bytes": m.get("bytes"), "duration_s": m.get("duration_s"),
                               "used_codes": cb.get("used_codes"), "perplexity": cb.get("perplexity")}
    ok = status_counts.get("ok", 0)
    samples = sum(status_counts.values())
    outcome = outcome or ScheduleOutcome()
    images = sum(r.images_ok for r in outcome.results.values())
    per_actor = []
    now = time.perf_counter()
    for slot in outcome.slots:
        if slot.info is None:
            continue
        alive_s = max((slot.retired_at or now) - (slot.ready_at or now), 1e-9)
        per_actor.append({"pid": slot.info.get("pid"), "host": slot.info.get("host"),
                          "node": slot.info.get("node"), "device": slot.info.get("device"),
                          "batch_size": slot.info.get("batch_size"), "batch_probe": slot.info.get("batch_probe"),
                          "shards": slot.shards, "images": slot.images, "busy_s": round(slot.busy_s, 3),
                          "utilisation": round(min(1.0, slot.busy_s / alive_s), 3)})
    stats: dict[str, Any] = {
        "job_fingerprint": fingerprint,  # the job's (tokenizer + token settings), as in _job.json
        "shards": len(shards),
        "totals": {"shards_committed": len(committed), "samples": samples, "ok": ok, "failed": samples - ok,
                   "rows": rows, "bytes": size,
                   "status_counts": dict(sorted(status_counts.items()))},
        "failed_shards": dict(sorted({**{n: f"committed, but tokens/{n}.parquet is missing or not the size its "
                                            f"manifest says; rerun to restore or redo it" for n in unpublished},
                                      **outcome.failed}.items())),
        "missing_shards": sorted(s.name for s in shards if s.name not in committed and s.name not in outcome.failed
                                 and s.name not in unpublished),
        "this_run": {"wall_s": round(wall_s, 3), "images": images,
                     "images_per_s": round(images / wall_s, 3) if wall_s > 0 else 0.0,
                     "shards_committed": len(outcome.results), "shards_skipped": skipped,
                     "shards_repaired": repaired, "leftover_files_removed": cleaned,
                     # Committed shards whose data file was missing or damaged, encoded again and
                     # published under their manifest (the same bytes).
                     "shards_redone": sorted(redone or []),
                     # Attempts that lost the commit to an attempt with *other* bytes (bf16, another
                     # GPU type): the shard is done with the first committed encoding.
                     "shards_committed_by_other_bytes": sorted(outcome.committed_by_other_bytes),
                     "shard_timeouts": outcome.timeouts,
                     "shard_attempts_failed": outcome.attempts_failed, "actor_deaths": outcome.actor_deaths,
                     "actors": len(per_actor), "per_actor": per_actor,
                     "actors_never_ready": sum(1 for s in outcome.slots if s.info is None),
                     "actor_startup_errors": outcome.startup_errors[-5:]},
        "per_shard": per_shard if len(shards) <= PER_SHARD_LIMIT else
        f"{len(shards)} shards: per-shard figures are in the manifests (_manifest/<shard>.json)",
        "codebook": None,
    }
    stats["audit"] = audit.result()
    if merged is not None:
        stats["codebook"] = {"vocab_size": int(merged.size), "tokens": int(merged.sum()),
                             "used_codes": int((merged > 0).sum()),
                             "usage": float((merged > 0).sum() / max(1, merged.size)),
                             "perplexity": perplexity(merged)}
    return stats
