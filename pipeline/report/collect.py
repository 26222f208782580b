"""Read what the tokenize job wrote (manifests, _stats.json, Parquet) into plain numbers.

Nothing here draws or decodes: every function returns data the figures and the page use.

Damaged data files fail the report, not one of its sections. The page turns any error of a
section into a note, so the data files the sections read whole (the first SCAN_ROWS ok rows for
the codebook and the reconstructions, the audit's worst rows) are fetched and checked against their
manifests (size, sha256; pipeline/sinks/integrity.py) here, when the output is loaded, and kept for
the sections (`data_file`): a damaged one raises integrity.DamagedDataError before any section
runs. A truncated file anywhere in the output is found by the listing's sizes.
"""

from __future__ import annotations

import datetime
import json
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.io import filesystem_for
from pipeline.sinks.arrow_io import open_parquet, parquet_from_bytes, read_schema
from pipeline.sinks.codebook import perplexity
from pipeline.sinks.integrity import check_data, is_checkable
from pipeline.sinks.manifest import (check_data_sizes, data_sizes, is_job_output, read_all_manifests,
                                     read_committed_set, shard_of_path)
from pipeline.sinks.schema import decode_metadata
from pipeline.sinks.writer import OutputLayout


@dataclass
class JobOutput:
    url: str
    layout: OutputLayout
    manifests: dict[str, dict[str, Any]]
    commit_times: dict[str, float]          # shard -> epoch seconds its manifest was written
    stats: dict[str, Any] | None
    data_files: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)   # scaletok.* of the first data file
    # Data files fetched whole and checked at load (what the sections read; module doc).
    fetched: dict[str, bytes] = field(default_factory=dict, repr=False)


# Ok rows the codebook section reads (scale_usage's max_rows), so fetched and checked at load.
SCAN_ROWS = 50_000


@dataclass
class ScaleUsage:
    label: str              # "3: 4x4"
    tokens: int
    used_codes: int
    vocab_size: int
    perplexity: float
    counts: np.ndarray      # per code

    @property
    def usage(self) -> float:
        return self.used_codes / self.vocab_size if self.vocab_size else 0.0


@dataclass
class ShardSpan:
    """One committed shard on the time axis of the actor that made it."""

    shard: str
    start: float            # seconds since the first shard started
    end: float
    images: int

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.end - self.start, 1e-9)


def load_job_output(url: str, storage_options: dict[str, Any] | None = None) -> JobOutput:
    layout = OutputLayout(url, storage_options or None)
    if not layout.fs.exists(layout.manifest_dir) and not layout.fs.exists(layout.tokens_dir):
        raise FileNotFoundError(f"{url} holds no tokenize output (no _manifest/ or tokens/)")
    if is_job_output(layout):  # what readers may read: the committed set of the job's fingerprint
        committed = read_committed_set(layout)
        manifests, data_files = committed.manifests, committed.data_paths()
        committed.check_sizes()
    else:  # an output from before _job.json: every manifest and data file
        manifests = read_all_manifests(layout)
        sizes = data_sizes(layout)
        data_files = [layout.data_path(name) for name in sorted(sizes)]
        check_data_sizes(layout, manifests, sizes)
    stats = None
    if layout.fs.exists(layout.join("_stats.json")):
        stats = json.loads(layout.read_bytes(layout.join("_stats.json")))
    metadata = {}
    if data_files:
        metadata = decode_metadata(read_schema(layout.fs, data_files[0]))
    job = JobOutput(url=url, layout=layout, manifests=manifests, commit_times=_commit_times(layout, manifests),
                    stats=stats, data_files=data_files, metadata=metadata)
    for path in files_read_whole(job):
        job.fetched[path] = _fetch_checked(job, path)
    return job


def manifest_of(job: JobOutput, path: str) -> dict[str, Any]:
    return job.manifests.get(shard_of_path(path, ".parquet")) or {}


def files_read_whole(job: JobOutput, scan_rows: int = SCAN_ROWS) -> list[str]:
    """The checkable data files the sections will read whole: the first ones up to `scan_rows` ok
    rows (codebook usage; the reconstruction grid's first rows are among them), unless the
    tokenizer is continuous (no codebook, no grid), and those of the audit's worst rows."""
    out, rows = [], 0
    if not job.metadata.get("continuous"):
        for path in job.data_files:
            if rows >= scan_rows:
                break
            manifest = manifest_of(job, path)
            if is_checkable(manifest):
                out.append(path)
                rows += int(manifest.get("ok") or 0)
    worst = ((job.stats or {}).get("audit") or {}).get("worst") or []
    for shard in dict.fromkeys(str(item.get("shard")) for item in worst if isinstance(item, dict)):
        path = job.layout.data_path(shard)
        if path not in out and is_checkable(job.manifests.get(shard)):
            out.append(path)
    return out


def _fetch_checked(job: JobOutput, path: str) -> bytes:
    data = job.layout.fs.cat_file(path)
    check_data(data, manifest_of(job, path), path)
    return data


def data_file(job: JobOutput, path: str) -> pq.ParquetFile:
    """A data file of the job, read whole and checked against its manifest (fetched at load when
    a section was known to need it)."""
    if path in job.fetched:
        return parquet_from_bytes(job.fetched[path])
    return open_parquet(job.layout.fs, path, manifest_of(job, path))


def _commit_times(layout: OutputLayout, manifests: dict[str, dict[str, Any]]) -> dict[str, float]:
    """A manifest's own `committed_at` if the runner records one, else its object's mtime (the
    manifest is created at commit, so that is the commit time)."""
    times = {}
    for shard, manifest in manifests.items():
        if isinstance(manifest.get("committed_at"), (int, float)):
            times[shard] = float(manifest["committed_at"])
            continue
        try:
            modified = layout.fs.modified(layout.manifest_path(shard))
            times[shard] = modified.timestamp()
        except (NotImplementedError, FileNotFoundError, OSError, AttributeError):
            pass
    return times


def actor_label(worker: dict[str, Any] | None) -> str:
    if not worker:
        return "unknown actor"
    node = str(worker.get("node") or "")[:8]
    return f"{worker.get('host', '?')} pid {worker.get('pid', '?')} ({worker.get('device', '?')}{', node ' + node if node else ''})"


def shown_run(stats: dict[str, Any] | None) -> dict[str, Any]:
    """The run the report describes: the last one that committed shards (a rerun that found
    nothing to do keeps the record of the run that did the work), else the latest."""
    stats = stats or {}
    return stats.get("last_working_run") or stats.get("this_run") or {}


def run_window(job: JobOutput) -> tuple[float, float] | None:
    """(start, end) in epoch seconds of the shown run, from its wall time and when it finished
    (recorded to the second, so never before its last commit); None when not recorded."""
    run = shown_run(job.stats)
    wall, finished = run.get("wall_s"), run.get("finished_at")
    if not isinstance(wall, (int, float)) or not finished:
        return None
    try:
        end = datetime.datetime.fromisoformat(str(finished)).timestamp()
    except ValueError:
        return None
    commits = [t for t in job.commit_times.values() if end - wall - 1.0 <= t <= end + 1.0]
    end = max([end, *commits])
    return end - float(wall), end


def throughput_spans(job: JobOutput, origin: float | None = None) -> dict[str, list[ShardSpan]]:
    """actor -> its shards on one time axis (commit time minus the shard's duration .. commit), in
    seconds since `origin` (the run's start; default: the first shard's start). With an origin,
    shards committed before it (by earlier runs) are left out."""
    raw = []
    for shard, m in job.manifests.items():
        end = job.commit_times.get(shard)
        if end is None or "duration_s" not in m:
            continue
        raw.append((actor_label(m.get("worker")), shard, end - float(m["duration_s"]), end, int(m.get("rows", 0))))
    if origin is not None:
        raw = [r for r in raw if r[3] >= origin]
    if not raw:
        return {}
    t0 = min(r[2] for r in raw) if origin is None else origin
    spans: dict[str, list[ShardSpan]] = defaultdict(list)
    for actor, shard, start, end, images in sorted(raw, key=lambda r: r[2]):
        spans[actor].append(ShardSpan(shard, start - t0, end - t0, images))
    return dict(spans)


def busy_seconds(spans: list[ShardSpan]) -> float:
    """Time with at least one shard in flight: the union of the spans (an actor works on
    --shards-per-actor shards at once, so their durations overlap)."""
    total, reach = 0.0, float("-inf")
    for s in sorted(spans, key=lambda s: s.start):
        if s.end > reach:
            total += s.end - max(s.start, reach)
            reach = s.end
    return total


def failures_by_kind(job: JobOutput) -> dict[str, int]:
    """Samples per error kind (status column), plus shards that never committed."""
    counts: Counter[str] = Counter()
    for m in job.manifests.values():
        for status, n in (m.get("status_counts") or {}).items():
            if status != "ok":
                counts[status] += int(n)
    failed_shards = (job.stats or {}).get("failed_shards") or {}
    if failed_shards:
        counts["shard failed (not committed)"] += len(failed_shards)
    return dict(counts.most_common())


def scale_usage(job: JobOutput, max_rows: int = SCAN_ROWS) -> list[ScaleUsage]:
    """Codebook usage and perplexity per scale from the stored tokens (the first `max_rows` ok rows).

    Rows are grouped by their grid shapes so each group is one (rows, L) array sliced per scale.
    Continuous tokenizers (latents, no codebook) have none: the list is empty."""
    if job.metadata.get("continuous"):
        return []
    vocab = int(job.metadata.get("vocab_size") or 0)
    groups = int(job.metadata.get("groups") or 1)
    counts: dict[int, np.ndarray] = {}
    shapes_seen: dict[int, Counter] = defaultdict(Counter)
    rows = 0
    for path in job.data_files:
        if rows >= max_rows:
            break
        table = data_file(job, path).read(columns=["status", "tokens", "scale_shapes"], use_threads=False)
        ok = [i for i, status in enumerate(table.column("status").to_pylist()) if status == "ok"][: max_rows - rows]
        if not ok:
            continue
        rows += len(ok)
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, shapes in zip(ok, table.column("scale_shapes").take(ok).to_pylist()):
            by_shape[tuple(shapes)].append(i)
        for shapes, idx in by_shape.items():
            tokens = table.column("tokens").take(idx).combine_chunks().values.to_numpy().astype(np.int64)
            tokens = tokens.reshape(len(idx), -1)
            start = 0
            for k, (h, w) in enumerate(zip(shapes[0::2], shapes[1::2])):
                codes = tokens[:, start:start + h * w * groups].ravel()
                start += h * w * groups
                size = max(vocab, int(codes.max()) + 1 if codes.size else 0, counts[k].size if k in counts else 0)
                hist = np.bincount(codes, minlength=size)
                counts[k] = hist if k not in counts else np.pad(counts[k], (0, size - counts[k].size)) + hist
                shapes_seen[k][(h, w)] += len(idx)
    out = []
    for k in sorted(counts):
        (h, w), _ = shapes_seen[k].most_common(1)[0]
        hist = counts[k]
        out.append(ScaleUsage(label=f"{k + 1}: {h}x{w}", tokens=int(hist.sum()), used_codes=int((hist > 0).sum()),
                              vocab_size=vocab or hist.size, perplexity=perplexity(hist), counts=hist))
    return out


def read_training_rows(run_dir: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The training run's metrics.jsonl rows (empty if it has none yet)."""
    fs, root = filesystem_for(run_dir, storage_options)
    path = posixpath.join(root, "metrics.jsonl")
    if not fs.exists(path):
        return []
    rows = [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]
    # A resumed run appends again from its checkpoint: keep the last row of each step.
    by_step = {r["step"]: r for r in rows if "step" in r}
    return [by_step[s] for s in sorted(by_step)]
