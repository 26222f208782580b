"""A training rank's token rows, held in memory, and the batch of every step.

Measured (benchmarks/train_ingest.py, RESULTS.md): streaming the files with Ray Data re-ran the
read at every epoch boundary (3.6-5.7 s stalls, 0.62-0.82 of the preloaded loop's throughput);
tokens are small (ImageNet at 680 tokens: ~1.7 GB of uint16 in all, 1/world of it per rank), so
each rank reads the files of its share (data_plan.split_images) whole, once, in a background
thread that overlaps the model's set-up, and every later batch is an index into memory. The
order of the next epoch is computed in the background while the current one runs.

The driver reads the status/variant columns of every file once (`rows_per_image`) to fix the
shares and the epoch length; the workers read only their own files. Every file is read whole and
checked against its commit record (size, sha256) before it is parsed: a damaged one raises
integrity.DamagedDataError, which train.py makes a failure Ray Train does not retry.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.sinks.arrow_io import open_parquet
from pipeline.var.data import READ_COLUMNS, TokenDataError, TokenSource, labels_array, tokens_array
from pipeline.var.data_plan import DataPlan, Segment, candidate_ranges, epoch_rows, image_rows

# A share may take at most this fraction of the memory available when the rank starts (several
# ranks share a node; the model, optimizer and Python need the rest).
MEMORY_FRACTION = 0.5


def _columns(fs: Any, path: str, names: Sequence[str], manifest: dict[str, Any] | None = None):
    # One fetch, checked, then the schema from the same bytes (a footer-only read first would
    # fail on a truncated file before the check could name it).
    parquet = open_parquet(fs, path, manifest)
    has_variant = "variant" in parquet.schema_arrow.names
    table = parquet.read(columns=[*names, *(["variant"] if has_variant else [])], use_threads=False)
    variant = table.column("variant").to_pylist() if has_variant else None
    return table, variant


def rows_per_image(source: TokenSource) -> list[np.ndarray]:
    """Per file, the number of ok rows of each usable image (driver side). Files without variants
    have one row per image: their commit records' ok counts say it all; otherwise the status and
    variant columns of every file are read."""
    counts = [m["status_counts"].get("ok", 0) if isinstance(m.get("status_counts"), dict) else None
              for m in source.manifests]
    if not source.metadata.get("variants") and len(counts) == len(source.files) and None not in counts:
        return [np.ones(int(n), dtype=np.int64) for n in counts]
    out = []
    for i, path in enumerate(source.files):
        table, variant = _columns(source.filesystem, path, ["status"], source.manifest_of(i))
        out.append(image_rows(table.column("status").to_pylist(), variant)[1])
    return out


@dataclass
class ShareRows:
    """The ok rows of a rank's images, in file order."""

    tokens: np.ndarray        # (R, L) as stored (uint16 / int32)
    labels: np.ndarray        # (R,) int64, null class for unlabelled rows
    cand_start: np.ndarray    # per image: first row it may contribute in one-variant mode
    cand_count: np.ndarray    # per image: how many rows (its crops if it has any, else all)

    @property
    def images(self) -> int:
        return len(self.cand_start)


def load_share(source: TokenSource, share: Sequence[Segment], seq_len: int, null_label: int) -> ShareRows:
    tokens, labels, images, variants, offset = [], [], [], [], 0
    for seg in share:
        table, variant = _columns(source.filesystem, source.files[seg.file], READ_COLUMNS,
                                  source.manifest_of(seg.file))
        image, _ = image_rows(table.column("status").to_pylist(), variant)
        keep = (image >= seg.first) & (image < seg.end)
        idx = np.flatnonzero(keep)
        part = table.take(idx)
        tokens.append(tokens_array(part, seq_len))
        labels.append(labels_array(part, null_label))
        images.append(image[keep] - seg.first + offset)
        variants += [variant[i] for i in idx] if variant is not None else [None] * len(idx)
        offset += seg.end - seg.first
    image = np.concatenate(images) if images else np.zeros(0, np.int64)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(all_labels) and (all_labels.min() < 0 or all_labels.max() > null_label):
        raise TokenDataError(f"labels {all_labels.min()}..{all_labels.max()} in the token files, outside the "
                             f"model's classes 0..{null_label - 1} (set --var-config num_classes)")
    has_variants = any(v is not None for v in variants)
    start, count = candidate_ranges(image, variants if has_variants else None, offset)
    return ShareRows(tokens=np.concatenate(tokens) if tokens else np.zeros((0, seq_len), np.uint16),
                     labels=all_labels,
                     cand_start=start, cand_count=count)


def share_bytes(share: Sequence[Segment], rows_per_file: Sequence[np.ndarray], seq_len: int, itemsize: int) -> int:
    rows = sum(int(rows_per_file[s.file][s.first:s.end].sum()) for s in share)
    return rows * seq_len * itemsize


def check_fits(nbytes: int, rank: int) -> None:
    """Refuse a share that cannot be held, before reading it (a worker killed for memory says less)."""
    import psutil

    available = psutil.virtual_memory().available
    if nbytes > MEMORY_FRACTION * available:
        raise TokenDataError(f"rank {rank}'s share of the tokens is {nbytes / 2**30:.2f} GiB, more than "
                             f"{MEMORY_FRACTION:.0%} of the {available / 2**30:.2f} GiB available: use more "
                             f"workers (each holds 1/num_workers) or fewer stored variants")


class ShareLoader:
    """`batch(step)`: this rank's (tokens (b, L) int64, labels (b,) int64) of 0-based step `step`.

    The share is read in a background thread started at construction; the first `batch` waits for
    it. Epoch orders are computed one epoch ahead in the background."""

    def __init__(self, source: TokenSource, share: Sequence[Segment], plan: DataPlan, rank: int,
                 seq_len: int, null_label: int) -> None:
        self.plan, self.rank = plan, rank
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"token-share-{rank}")
        self._rows: Future = self._pool.submit(load_share, source, share, seq_len, null_label)
        self._orders: dict[int, Future] = {}
        self._lock = threading.Lock()

    @property
    def rows(self) -> ShareRows:
        return self._rows.result()

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            for e in (epoch, epoch + 1):  # this epoch, and the next one ahead of time
                if e not in self._orders:
                    self._orders[e] = self._pool.submit(self._compute_order, e)
            for e in [e for e in self._orders if e < epoch]:
                del self._orders[e]
            future = self._orders[epoch]
        return future.result()

    def _compute_order(self, epoch: int) -> np.ndarray:
        rows = self.rows
        return epoch_rows(self.plan, epoch, self.rank, rows.cand_start, rows.cand_count, len(rows.labels))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = self.plan.position(step)
        b = self.plan.per_rank_batch
        picked = self._order(epoch)[i * b:(i + 1) * b]
        rows = self.rows
        return (torch.from_numpy(rows.tokens[picked].astype(np.int64)),
                torch.from_numpy(rows.labels[picked]))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
