"""The tokenizer actor: one per GPU (or CPU slot), loads the tokenizer once, tokenizes whole shards.

`ShardWorker` is a plain class (usable without Ray); `make_actor_class` wraps it as
`@ray.remote(num_gpus=G, num_cpus=C)`. Ray sets CUDA_VISIBLE_DEVICES per actor, which is the GPU
pinning; with logical GPUs on a CPU-only machine the actor falls back to the CPU.
"""

from __future__ import annotations

import os
import socket
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from pipeline.runner.build import build_tokenizer
from pipeline.runner.config import JobSpec
from pipeline.runner.shard_task import ShardResult, process_shard
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.listing import Shard


class ShardWorker:
    def __init__(self, spec: JobSpec, num_cpus: float = 1.0, reporter: Any = None) -> None:
        torch.set_num_threads(max(1, int(num_cpus)))
        self.device = "cuda" if _has_assigned_gpu() else "cpu"
        self.spec = spec
        self.tokenizer = build_tokenizer(spec, self.device)
        self.fingerprint = self.tokenizer.fingerprint()
        self.layout = OutputLayout(spec.output, spec.storage_options)
        self.pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="decode")
        self.reporter = reporter
        self.info_dict = {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device,
                          "node": _node_id(), "fingerprint": self.fingerprint}

    def info(self) -> dict[str, Any]:
        return self.info_dict

    def process(self, shard: Shard, attempt: int = 0) -> ShardResult:
        """Never raises for a bad shard: the driver decides about retries from the result."""
        report = (lambda n: self.reporter.add.remote(n)) if self.reporter is not None else None
        worker = {k: self.info_dict[k] for k in ("pid", "host", "node", "device")}
        try:
            return process_shard(shard, self.tokenizer, self.spec, self.layout, attempt=attempt,
                                 worker=worker, pool=self.pool, report=report)
        except Exception as e:
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            return ShardResult(shard=shard.name, ok=False, error=last, worker=worker)


def make_actor_class(num_gpus: float, num_cpus: float, runtime_env: dict[str, Any] | None = None):
    import ray

    options: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": num_cpus, "max_restarts": 0}
    if runtime_env:
        options["runtime_env"] = runtime_env
    return ray.remote(**options)(ShardWorker)


def _has_assigned_gpu() -> bool:
    try:
        import ray

        return bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    except Exception:
        return torch.cuda.is_available()


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None
