"""One shard, start to finish, without Ray: stream -> decode (threads) -> encode -> Parquet -> commit.

The Ray actor (actor.py) only holds the tokenizer and calls `process_shard`; tests can call it
directly. Rows come out in tar order whatever the thread timing, so the data file's bytes depend
only on the shard and the job's token settings.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from pipeline.runner.config import JobSpec
from pipeline.runner.encode_batch import encode_batch
from pipeline.sinks.manifest import build_manifest, commit_shard
from pipeline.sinks.schema import ORIGINAL_VARIANT, build_table, token_schema
from pipeline.sinks.writer import OutputLayout, parquet_bytes
from pipeline.sources.decode import DecodedSample, decode_sample
from pipeline.sources.listing import Shard
from pipeline.sources.tar_stream import RawSample, iter_samples
from pipeline.tokenizers.base import Tokenizer

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ShardResult:
    shard: str
    ok: bool
    error: str | None = None
    created: bool = False          # this attempt created the manifest (False: already committed)
    rows: int = 0
    samples: int = 0
    images_ok: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    encode_s: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], lookahead: int) -> Iterator[R]:
    """pool.map that reads `items` lazily (at most `lookahead` in flight) and keeps their order."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= lookahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare_sample(tok: Tokenizer, spec: JobSpec, raw: RawSample) -> tuple[DecodedSample, torch.Tensor | None]:
    """Thread-pool step: decode and apply the image policy; the PIL image is dropped afterwards."""
    sample = decode_sample(raw, spec.max_image_pixels)
    if not sample.ok:
        return sample, None
    try:
        x = tok.preprocess([sample.image])
    except Exception as e:
        sample.fail("preprocess_error", f"{type(e).__name__}: {e}")
        return sample, None
    sample.image = None
    return sample, x


def process_shard(shard: Shard, tok: Tokenizer, spec: JobSpec, layout: OutputLayout, *,
                  attempt: int = 0, worker: dict[str, Any] | None = None, pool: Executor | None = None,
                  report: Callable[[int], None] | None = None) -> ShardResult:
    start = time.perf_counter()
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(spec.decode_threads)
    histogram = np.zeros(tok.vocab_size, dtype=np.int64)
    rows, encode_s, samples = [], 0.0, 0
    try:
        raw = iter_samples(shard.url, spec.storage_options, spec.max_member_bytes)
        prepared = ordered_map(pool, lambda r: prepare_sample(tok, spec, r), raw, 2 * spec.batch_size)
        for batch in batched(prepared, spec.batch_size):
            t = time.perf_counter()
            rows.extend(encode_batch(tok, spec, batch, shard.name, histogram))
            encode_s += time.perf_counter() - t
            samples += len(batch)
            if report is not None:
                report(sum(1 for s, _ in batch if s.ok))
    finally:
        if own_pool:
            pool.shutdown(wait=False, cancel_futures=True)
    schema = token_schema(tok.vocab_size, with_variant=bool(spec.variants), metadata=spec.metadata)
    data = parquet_bytes(build_table(rows, schema), spec.row_group_rows)
    counts: dict[str, int] = {}
    for row in rows:
        if row.variant == ORIGINAL_VARIANT:
            counts[row.status] = counts.get(row.status, 0) + 1
    duration = time.perf_counter() - start
    manifest = build_manifest(
        shard=shard.name, input_url=shard.url, data_file=f"tokens/{shard.name}.parquet", data=data,
        rows=len(rows), status_counts=counts, samples=samples, fingerprint=spec.fingerprint,
        tokenizer_fingerprint=spec.tokenizer_fingerprint, histogram=histogram, duration_s=duration,
        attempt=attempt, worker=worker or {})
    created = commit_shard(layout, shard.name, data, manifest)
    return ShardResult(shard=shard.name, ok=True, created=created, rows=len(rows), samples=samples,
                       images_ok=counts.get("ok", 0), status_counts=counts, duration_s=duration,
                       encode_s=encode_s, worker=worker or {})
