"""One shard, start to finish, without Ray: stream -> decode (threads) -> encode -> Parquet -> commit.

The Ray actor (actor.py) only holds the tokenizer and calls `process_shard`; tests can call it
directly. Rows come out in tar order whatever the thread timing, so the data file's bytes depend
only on the shard and the job's token settings.

Overlap. The tar is read in a thread of its own and its images are decoded in the actor's pool,
up to `2 * batch_size` samples ahead of the encoder (`DecodeStream`). An actor may run several
shards at once (`--shards-per-actor`): they share one encoder through `encoder_lock`, taken once
the shard's first batch is decoded and held until its last batch is encoded. So while shard N
encodes, shard N+1 is already streaming and decoding, and while shard N builds and commits its
Parquet file, shard N+1 encodes. Each shard's write happens in its own call, so a write error is
that shard's result and nobody else's.

--gpu-decode: the decode threads only read JPEG headers; the batch's JPEGs are decoded on the
GPU right before it is encoded (`finish_on_device`, pipeline/sources/device_decode.py).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from pipeline.runner.config import JobSpec
from pipeline.runner.encode_batch import encode_batch
from pipeline.runner.recon_audit import audit_batch
from pipeline.runner.crop_views import preprocess_views
from pipeline.sinks.manifest import CREATED, LOST, build_manifest, commit_shard, label_summary
from pipeline.sinks.schema import ORIGINAL_VARIANT, TokenRow, build_table, token_schema
from pipeline.sinks.writer import OutputLayout, parquet_bytes
from pipeline.sources.decode import DecodedSample, decode_sample
from pipeline.sources.device_decode import Decoder, to_device_tensors
from pipeline.sources.listing import Shard
from pipeline.sources.inputs import iter_shard_samples
from pipeline.sources.tar_stream import RawSample
from pipeline.tokenizers.base import Tokenizer
from pipeline.transient import OUT_OF_MEMORY_STATUS, TransientError, is_out_of_memory

T = TypeVar("T")
Prepared = tuple[DecodedSample, "torch.Tensor | None"]


@dataclass
class ShardResult:
    shard: str
    ok: bool
    error: str | None = None
    commit: str = ""               # manifest.CREATED / COMMITTED_SAME / COMMITTED_OTHER (other bytes won) / LOST
    retryable: bool = True         # False: another attempt cannot do better (the shard's committed bytes are lost)
    rows: int = 0
    samples: int = 0
    images_ok: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    encode_s: float = 0.0          # the encoder's own time (batches of this shard)
    # Where the rest of the time went (the profile of benchmarks/pipeline_efficiency.py):
    read_s: float = 0.0            # reading + untarring, in the shard's reader thread
    decode_s: float = 0.0          # decode + image policy, CPU seconds summed over decode threads
    first_batch_s: float = 0.0     # from the start to the first decoded batch (encoder not held)
    wait_encoder_s: float = 0.0    # first batch ready, encoder busy with another shard
    wait_input_s: float = 0.0      # encoder held, waiting for decoded images (decode-bound)
    write_s: float = 0.0           # Parquet build + commit (encoder already released)
    device_decode_s: float = 0.0   # --gpu-decode: the batched device decode + policy (encoder held)
    audit_s: float = 0.0           # --audit-fraction: decoding the sampled rows (encoder held)
    worker: dict[str, Any] = field(default_factory=dict)

    @property
    def created(self) -> bool:
        """This attempt created the manifest (False: the shard was committed by another attempt)."""
        return self.commit == CREATED


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare_sample(tok: Tokenizer, spec: JobSpec, raw: RawSample, pin: bool = False,
                   device_jpeg: bool = False, final_attempt: bool = True) -> Prepared:
    """Thread-pool step: decode and apply the image policy; the PIL image is dropped afterwards.
    `pin`: page-lock the tensor so the encoder's host->GPU copy can be asynchronous.
    `device_jpeg`: JPEGs the GPU can decode stay undecoded (`sample.jpeg`, no tensor yet).
    Out of memory raises TransientError (the attempt is retried) unless `final_attempt`."""
    draft = tok.preprocess_config if spec.jpeg_draft else None
    try:
        sample = decode_sample(raw, spec.max_image_pixels, draft=draft, device_jpeg=device_jpeg)
    except TransientError as e:
        if not final_attempt:
            raise
        return _out_of_memory(raw, e), None
    if not sample.ok or sample.jpeg is not None:
        return sample, None
    try:
        x = preprocess_views(tok, spec, sample)
    except Exception as e:
        if is_out_of_memory(e):
            if not final_attempt:
                raise TransientError(f"out of memory preprocessing {raw.key!r}: {e}") from e
            return sample.fail(OUT_OF_MEMORY_STATUS, f"{type(e).__name__}: {e}"), None
        sample.fail("preprocess_error", f"{type(e).__name__}: {e}")
        return sample, None
    sample.image = None
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return sample, (x.pin_memory() if pin else x)


def _out_of_memory(raw: RawSample, error: Exception) -> DecodedSample:
    return DecodedSample(index=raw.index, key=raw.key).fail(OUT_OF_MEMORY_STATUS, f"{type(error).__name__}: {error}")


class DecodeStream:
    """A shard's samples, read by a thread of its own and decoded in `pool`, at most `lookahead`
    ahead of the consumer; iterating gives `fn(raw)` in tar order. Reading starts at construction
    (before anyone iterates), which is what lets a queued shard prefetch. A read error (e.g. an
    unreadable shard) is raised to the consumer. Call `close()` when done (also on errors)."""

    _END = object()

    def __init__(self, samples: Callable[[], Iterator[RawSample]], fn: Callable[[RawSample], T],
                 pool: Executor, lookahead: int) -> None:
        self.fn, self.pool = fn, pool
        self.items: queue.Queue = queue.Queue(maxsize=max(1, lookahead))
        self.stopped = threading.Event()
        self.read_s = 0.0
        self.decode_s = 0.0
        self.thread = threading.Thread(target=self._read, args=(samples,), name="shard-reader", daemon=True)
        self.thread.start()

    def _timed(self, raw: RawSample) -> tuple[T, float]:
        t = time.thread_time()
        return self.fn(raw), time.thread_time() - t

    def _read(self, samples: Callable[[], Iterator[RawSample]]) -> None:
        try:
            it = samples()
            try:
                while not self.stopped.is_set():
                    t = time.perf_counter()
                    raw = next(it, self._END)
                    self.read_s += time.perf_counter() - t
                    if raw is self._END:
                        break
                    if not self._put(self.pool.submit(self._timed, raw)):
                        return
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()  # closes the shard's stream in this thread
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def _put(self, item: Any) -> bool:
        while not self.stopped.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self.items.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            value, seconds = item.result()
            self.decode_s += seconds
            yield value

    def close(self) -> None:
        self.stopped.set()
        while True:
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Future):
                item.cancel()
        self.thread.join(timeout=30)


def finish_on_device(batch: list[Prepared], decoder: Decoder, tok: Tokenizer, spec: JobSpec,
                     device: torch.device) -> list[Prepared]:
    """Decode the batch's pending JPEGs on the device (one call), in place of their missing tensors."""
    pending = [i for i, (s, _) in enumerate(batch) if s.ok and s.jpeg is not None]
    if not pending:
        return batch
    tensors = to_device_tensors([batch[i][0].jpeg for i in pending], decoder, tok.preprocess_config,
                                tok.input_range, device)
    out = list(batch)
    for i, x in zip(pending, tensors):
        sample = batch[i][0]
        sample.jpeg = None
        if isinstance(x, Exception):  # like a failed CPU decode: no size recorded
            sample.height = sample.width = None
            out[i] = (sample.fail("decode_error", f"{type(x).__name__}: {x}"), None)
        else:
            out[i] = (sample, x.contiguous(memory_format=torch.channels_last) if spec.channels_last else x)
    return out


@dataclass
class EncodedShard:
    """A shard's rows in tar order and what encoding them took (before anything is written)."""

    rows: list[TokenRow]
    samples: int
    histogram: np.ndarray
    started: float                 # perf_counter() at the start of the attempt
    read_s: float
    decode_s: float
    timing: dict[str, float]
    audit: list[dict[str, Any]] = field(default_factory=list)   # reconstruction audit records


def process_shard(shard: Shard, tok: Tokenizer, spec: JobSpec, layout: OutputLayout, *,
                  attempt: int = 0, worker: dict[str, Any] | None = None, pool: Executor | None = None,
                  report: Callable[[int], None] | None = None,
                  encoder_lock: contextlib.AbstractContextManager | None = None,
                  device_decoder: Decoder | None = None,
                  on_step: Callable[[str], None] | None = None) -> ShardResult:
    """Encode the shard, then write and commit it. `encoder_lock`: shared by the shards an actor
    runs at once (None: this shard alone). `device_decoder`: --gpu-decode's JPEG decoder
    (device_decode.nvjpeg_decoder), None for Pillow. `on_step`: see manifest.commit_shard."""
    encoded = encode_shard(shard, tok, spec, attempt=attempt, pool=pool, report=report,
                           encoder_lock=encoder_lock, device_decoder=device_decoder)
    # The encoder is free for the actor's next shard from here on.
    return write_and_commit(shard, encoded, spec, layout, attempt=attempt, worker=worker or {}, on_step=on_step)


def encode_shard(shard: Shard, tok: Tokenizer, spec: JobSpec, *, attempt: int = 0,
                 pool: Executor | None = None, report: Callable[[int], None] | None = None,
                 encoder_lock: contextlib.AbstractContextManager | None = None,
                 device_decoder: Decoder | None = None) -> EncodedShard:
    """stream -> decode (threads) -> batches -> encode, holding the encoder from the first decoded
    batch to the last. Out of memory fails the attempt unless it is the last one (pipeline/transient.py)."""
    start = time.perf_counter()
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(spec.decode_threads)
    lock = encoder_lock if encoder_lock is not None else contextlib.nullcontext()
    device = torch.device(getattr(tok, "device", "cpu"))
    to_gpu = device.type == "cuda"
    final = attempt >= spec.max_shard_retries
    histogram = np.zeros(tok.vocab_size, dtype=np.int64)
    rows: list[TokenRow] = []
    samples = 0
    timing = dict(encode_s=0.0, first_batch_s=0.0, wait_encoder_s=0.0, wait_input_s=0.0, device_decode_s=0.0,
                  audit_s=0.0)
    audits: list[dict[str, Any]] = []
    on_device = device_decoder is not None
    stream = DecodeStream(lambda: iter_shard_samples(shard, spec.storage_options, spec.max_member_bytes,
                                                     spec.parquet_columns),
                          lambda raw: prepare_sample(tok, spec, raw, pin=to_gpu, device_jpeg=on_device,
                                                     final_attempt=final),
                          pool, 2 * spec.batch_size)
    try:
        batches = batched(stream, spec.batch_size)
        batch = next(batches, None)
        timing["first_batch_s"] = time.perf_counter() - start
        t = time.perf_counter()
        with lock:
            timing["wait_encoder_s"] = time.perf_counter() - t
            while batch is not None:
                if to_gpu:  # pinned host memory: the copy overlaps with whatever the GPU still runs
                    batch = [(s, x.to(device, non_blocking=True) if x is not None else None) for s, x in batch]
                if device_decoder is not None:
                    t = time.perf_counter()
                    batch = finish_on_device(batch, device_decoder, tok, spec, device)
                    timing["device_decode_s"] += time.perf_counter() - t
                t = time.perf_counter()
                batch_rows = encode_batch(tok, spec, batch, shard.name, histogram, final_attempt=final)
                timing["encode_s"] += time.perf_counter() - t
                t = time.perf_counter()
                audits.extend(audit_batch(tok, spec, batch, batch_rows, shard.name))
                timing["audit_s"] += time.perf_counter() - t
                rows.extend(batch_rows)
                samples += len(batch)
                if report is not None:
                    report(sum(1 for s, _ in batch if s.ok))
                t = time.perf_counter()
                batch = next(batches, None)
                timing["wait_input_s"] += time.perf_counter() - t
    finally:
        stream.close()
        if own_pool:
            pool.shutdown(wait=False, cancel_futures=True)
    return EncodedShard(rows=rows, samples=samples, histogram=histogram, started=start,
                        read_s=stream.read_s, decode_s=stream.decode_s, timing=timing, audit=audits)


def write_and_commit(shard: Shard, encoded: EncodedShard, spec: JobSpec, layout: OutputLayout, *,
                     attempt: int, worker: dict[str, Any],
                     on_step: Callable[[str], None] | None = None) -> ShardResult:
    """Rows -> deterministic Parquet bytes -> the commit protocol (sinks/manifest.py)."""
    t_write = time.perf_counter()
    schema = token_schema(spec.vocab_size, with_variant=bool(spec.variants), metadata=spec.metadata)
    data = parquet_bytes(build_table(encoded.rows, schema), spec.row_group_rows)
    originals = [row for row in encoded.rows if row.variant == ORIGINAL_VARIANT]
    counts: dict[str, int] = {}
    for row in originals:
        counts[row.status] = counts.get(row.status, 0) + 1
    manifest = build_manifest(
        shard=shard.name, input_url=shard.display_url, data=data, rows=len(encoded.rows), status_counts=counts,
        samples=encoded.samples, fingerprint=spec.fingerprint, tokenizer_fingerprint=spec.tokenizer_fingerprint,
        histogram=encoded.histogram, duration_s=time.perf_counter() - encoded.started, attempt=attempt,
        attempt_id=layout.new_attempt_id(), worker=worker,
        labels=label_summary(row.label for row in originals if row.status == "ok"), audit=encoded.audit)
    outcome = commit_shard(layout, shard.name, data, manifest, on_step=on_step)
    if outcome == LOST:
        return ShardResult(shard=shard.name, ok=False, commit=outcome, retryable=False, worker=worker,
                           error=lost_message(shard.name, manifest["sha256"]))
    return ShardResult(shard=shard.name, ok=True, commit=outcome,
                       rows=len(encoded.rows), samples=encoded.samples, images_ok=counts.get("ok", 0),
                       status_counts=counts, duration_s=time.perf_counter() - encoded.started,
                       read_s=encoded.read_s, decode_s=encoded.decode_s, write_s=time.perf_counter() - t_write,
                       worker=worker, **encoded.timing)


def lost_message(shard: str, encoded_sha256: str) -> str:
    return (f"lost: committed earlier, but tokens/{shard}.parquet is missing or damaged and no copy of its "
            f"committed bytes is left; encoded again it gives other bytes (sha256 {encoded_sha256[:12]}), which "
            f"are never published under the old manifest. To commit the new encoding, delete "
            f"_manifest/{shard}.json and tokens/{shard}.parquet and rerun")
