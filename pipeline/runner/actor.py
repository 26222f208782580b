"""The tokenizer actor: one per GPU (or CPU slot), loads the tokenizer once, tokenizes whole shards.

`ShardWorker` is a plain class (usable without Ray); `make_actor_class` wraps it as
`@ray.remote(num_gpus=G, num_cpus=C, max_concurrency=S)`. Ray sets CUDA_VISIBLE_DEVICES per actor,
which is the GPU pinning; with logical GPUs on a CPU-only machine the actor falls back to the CPU.

With `max_concurrency=S` (--shards-per-actor) the driver keeps S shards in flight per actor, each
`process` call in its own thread: they share the decode pool and take turns on the encoder
(`encoder_lock`, see shard_task.py), so reading, decoding and writing overlap with encoding.
"""

from __future__ import annotations

import os
import socket
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from pipeline.errors import give_up_of
from pipeline.runner.batch_probe import BatchChoice, choose_batch_size
from pipeline.runner.build import build_tokenizer
from pipeline.runner.config import JobSpec
from pipeline.runner.shard_task import ShardResult, process_shard
from pipeline.secrets import scrub_text
from pipeline.sinks.schema import build_table, token_schema
from pipeline.sinks.writer import OutputLayout, parquet_bytes
from pipeline.sources.device_decode import nvjpeg_decoder
from pipeline.sources.listing import Shard


class ShardWorker:
    def __init__(self, spec: JobSpec, num_cpus: float = 1.0, reporter: Any = None) -> None:
        torch.set_num_threads(max(1, int(num_cpus)))
        spec = spec.with_live_options()  # the storage options came through Ray's object store
        self.device = "cuda" if _has_assigned_gpu() else "cpu"
        self.spec = spec
        # --gpu-decode without a usable nvJPEG fails the actor's start (a clear startup error on the
        # driver) rather than mixing decoders, and so pixels, within one job.
        self.device_decoder = nvjpeg_decoder(self.device) if spec.gpu_decode else None
        self.tokenizer = build_tokenizer(spec, self.device)
        self.fingerprint = self.tokenizer.fingerprint()  # before the speed options touch the model
        apply_speed_options(self.tokenizer, spec)
        self.batch_choice: BatchChoice | None = None
        if spec.auto_batch:  # measured on this actor's device, with the speed options applied
            self.batch_choice = choose_batch_size(self.tokenizer, spec.patch_nums, spec.tile_size, spec.overlap,
                                                  spec.max_batch_size, spec.channels_last)
            self.spec = spec = spec.replace(batch_size=self.batch_choice.batch)
        self.encoder_lock = threading.Lock()
        warm_up_writer(self.tokenizer, spec)
        self.layout = OutputLayout(spec.output, spec.storage_options, run_id=spec.run_id,
                                   allow_unconditional=spec.allow_unconditional_commit)
        self.pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="decode")
        self.reporter = reporter
        self.info_dict = {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device,
                          "node": _node_id(), "fingerprint": self.fingerprint, "batch_size": spec.batch_size,
                          "batch_probe": self.batch_choice.describe() if self.batch_choice else None}

    def info(self) -> dict[str, Any]:
        return self.info_dict

    def process(self, shard: Shard, attempt: int = 0) -> ShardResult:
        """Never raises for a bad shard: the driver decides about retries from the result."""
        report = (lambda n: self.reporter.add.remote(n)) if self.reporter is not None else None
        worker = {k: self.info_dict[k] for k in ("pid", "host", "node", "device", "batch_size")}
        try:
            return process_shard(shard, self.tokenizer, self.spec, self.layout, attempt=attempt,
                                 worker=worker, pool=self.pool, report=report, encoder_lock=self.encoder_lock,
                                 device_decoder=self.device_decoder)
        except Exception as e:
            # A store's give-up names the store, operation and fault rate: better than its OSError.
            last = give_up_of(e) or traceback.format_exception_only(type(e), e)[-1].strip()
            return ShardResult(shard=shard.name, ok=False, error=scrub_text(last, self.spec.storage_options),
                               worker=worker)


def warm_up_writer(tok: Any, spec: JobSpec) -> None:
    """Build one empty Parquet file in memory: pyarrow's first table costs about a second of lazy
    initialisation, better spent here than on the first shard."""
    try:
        schema = token_schema(tok.vocab_size, with_variant=bool(spec.variants), metadata=spec.metadata)
        parquet_bytes(build_table([], schema), spec.row_group_rows)
    except Exception:
        pass  # only a warm-up: the first shard reports any real problem


def apply_speed_options(tok: Any, spec: JobSpec) -> None:
    """--channels-last and --compile: they change kernels, not what is computed (like the batch
    size, they are not part of the fingerprint). Other kernels round differently, so codes at
    near-ties can flip: both stay off by default (benchmarks/RESULTS.md section 2b). Only the
    encoder is compiled: the nearest-code search stays eager fp32."""
    if spec.channels_last:
        tok.model.to(memory_format=torch.channels_last)
    encoder = getattr(tok.model, "encoder", None)
    if spec.compile and isinstance(encoder, torch.nn.Module):
        encoder.compile()  # in place: the state dict (and so the fingerprint) keeps its keys


def make_actor_class(num_gpus: float, num_cpus: float, runtime_env: dict[str, Any] | None = None,
                     max_concurrency: int = 1):
    import ray

    options: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": num_cpus, "max_restarts": 0,
                               "max_concurrency": max(1, int(max_concurrency))}
    if runtime_env:
        options["runtime_env"] = runtime_env
    return ray.remote(**options)(ShardWorker)


def _has_assigned_gpu() -> bool:
    try:
        import ray

        if ray.is_initialized():  # in-process use (tests, benchmarks) must not start a Ray
            return bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    except Exception:
        pass
    return torch.cuda.is_available()


def _node_id() -> str | None:
    try:
        import ray

        # get_runtime_context() would start a local Ray when there is none.
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None
