"""`--batch-size auto`: the batch that fills the actor's device, measured on the device itself.

Every actor runs the probe once, after its tokenizer is built and before its first shard: it
encodes a synthetic batch of the job's input size at batch 1, 2, 4, ... and keeps doubling while
(a) the batch still fits: no out-of-memory error and the peak memory stays under the budget
(on a GPU `memory_fraction` of the device: the rest is headroom for cuDNN workspaces and a second
shard's tensors; on a CPU half of the memory available at the start), and the next doubling is
not predicted to exceed it (memory in use before the batch + twice what the batch added: on a CPU
an out-of-memory is the kernel killing the actor, not an exception), and (b) doubling still pays:
the probe stops after two doublings that each gained less than `tolerance` in images/s over the
best so far.
The choice is the smallest batch within `tolerance` of the best throughput measured: a larger
batch than that only costs memory and latency.

Why on the device and not from a formula: activation memory per image depends on the tokenizer,
its tiling and cuDNN's algorithm choices; the only reliable number is a measured peak.

Tokens. A batch size changes kernels, not what is computed, so it is not part of the job's
fingerprint (like --channels-last). On CPU the encoders give the same tokens at any batch size
(tests/job/test_batch_probe.py checks it); on GPUs cuDNN may pick other algorithms per batch size,
so actors on GPUs of different types can choose different batches and differ in the last bits.
The chosen batch is recorded per actor (the job log and every shard's manifest `worker` entry).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from pipeline.tokenizers.base import Tokenizer
from pipeline.images import PreprocessConfig

DEFAULT_MAX_BATCH = 256
MIN_TIMED_S = 0.3        # each batch size is timed over at least this long (and 2 calls)


@dataclass
class ProbeStep:
    batch: int
    images_per_s: float | None = None   # None: did not fit
    peak_bytes: int | None = None       # peak memory during the calls (GPU allocator, or the process RSS)
    error: str | None = None
    base_bytes: int = 0                 # memory in use before the batch was made (weights, ...)

    @property
    def fits(self) -> bool:
        return self.images_per_s is not None


@dataclass
class BatchChoice:
    batch: int
    steps: list[ProbeStep] = field(default_factory=list)
    reason: str = ""

    def describe(self) -> str:
        rates = ", ".join(f"{s.batch}: {s.images_per_s:.1f}" if s.fits else f"{s.batch}: {s.error}" for s in self.steps)
        return f"batch {self.batch} ({self.reason}; img/s by batch {rates})"


def pick_batch_size(measure: Callable[[int], ProbeStep], max_batch: int = DEFAULT_MAX_BATCH,
                    tolerance: float = 0.05, memory_budget: int | None = None) -> BatchChoice:
    """Doubling search over `measure(batch)` (see the module doc). Pure: the device work is in `measure`."""
    if max_batch < 1:
        raise ValueError("the largest batch to probe must be >= 1")
    steps: list[ProbeStep] = []
    best = 0.0
    stalls = 0
    reason = f"reached the cap of {max_batch}"
    batch = 1
    while batch <= max_batch:
        step = measure(batch)
        if step.fits and memory_budget is not None and step.peak_bytes is not None and step.peak_bytes > memory_budget:
            step = ProbeStep(batch, None, step.peak_bytes,
                             f"peak {step.peak_bytes / 2**30:.1f} GiB over the {memory_budget / 2**30:.1f} GiB budget")
        steps.append(step)
        if not step.fits:
            reason = f"batch {batch} does not fit"
            break
        assert step.images_per_s is not None
        stalls = stalls + 1 if step.images_per_s < best * (1 + tolerance) else 0
        best = max(best, step.images_per_s)
        if stalls >= 2:
            reason = "throughput stopped growing"
            break
        if memory_budget is not None and step.peak_bytes is not None and 2 * batch <= max_batch:
            predicted = step.base_bytes + 2 * max(0, step.peak_bytes - step.base_bytes)
            if predicted > memory_budget:
                reason = (f"batch {2 * batch} would need ~{predicted / 2**30:.1f} GiB, over the "
                          f"{memory_budget / 2**30:.1f} GiB budget")
                break
        batch *= 2
    fitting = [s for s in steps if s.fits]
    if not fitting:
        raise RuntimeError(f"--batch-size auto: not even one image fits on this device ({steps[0].error})")
    top = max(s.images_per_s or 0.0 for s in fitting)
    chosen = min(s.batch for s in fitting if (s.images_per_s or 0.0) >= (1 - tolerance) * top)
    return BatchChoice(chosen, steps, reason)


def probe_input_size(pre: PreprocessConfig) -> tuple[int, int]:
    """The (H, W) the probe encodes: the job's fixed size, or the largest a native image can have."""
    if pre.mode in ("center-crop", "resize"):
        return pre.size, pre.size
    if pre.max_side is None:
        raise ValueError("--batch-size auto needs a bounded input size: with --image-policy native give "
                         "--max-side (the probe measures the largest image a batch can hold)")
    return pre.max_side, pre.max_side


def device_measure(tok: Tokenizer, patch_nums: tuple[int, ...], tile_size: int | None, overlap: int | None,
                   size: tuple[int, int], channels_last: bool = False) -> Callable[[int], ProbeStep]:
    """`measure(batch)` for `pick_batch_size`: time `tok.encode` on a seeded random batch."""
    device = torch.device(getattr(tok, "device", "cpu"))
    cuda = device.type == "cuda"
    lo, hi = tok.input_range

    def measure(batch: int) -> ProbeStep:
        gen = torch.Generator().manual_seed(batch)
        x = None
        base = int(torch.cuda.memory_allocated(device)) if cuda else process_rss()
        try:
            x = torch.rand(batch, 3, *size, generator=gen).mul_(hi - lo).add_(lo).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            tok.encode(x, patch_nums=patch_nums, tile_size=tile_size, overlap=overlap)  # warm-up
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < MIN_TIMED_S:
                tok.encode(x, patch_nums=patch_nums, tile_size=tile_size, overlap=overlap)
                if cuda:
                    torch.cuda.synchronize(device)
                calls += 1
            elapsed = time.perf_counter() - start
            peak = int(torch.cuda.max_memory_allocated(device)) if cuda else peak_rss()
            return ProbeStep(batch, batch * calls / elapsed, peak, base_bytes=base or 0)
        except (torch.cuda.OutOfMemoryError, MemoryError) as e:
            return ProbeStep(batch, None, None, f"out of memory ({type(e).__name__})")
        except RuntimeError as e:
            if "out of memory" not in str(e).lower():
                raise
            return ProbeStep(batch, None, None, "out of memory")
        finally:
            del x
            if cuda:
                torch.cuda.empty_cache()

    return measure


def choose_batch_size(tok: Tokenizer, patch_nums: tuple[int, ...], tile_size: int | None, overlap: int | None,
                      max_batch: int = DEFAULT_MAX_BATCH, channels_last: bool = False,
                      memory_fraction: float = 0.8) -> BatchChoice:
    size = probe_input_size(tok.preprocess_config)
    device = torch.device(getattr(tok, "device", "cpu"))
    if device.type == "cuda":
        budget = int(memory_fraction * torch.cuda.get_device_properties(device).total_memory)
    else:
        available = available_memory()
        budget = (process_rss() or 0) + available // 2 if available else None
    measure = device_measure(tok, patch_nums, tile_size, overlap, size, channels_last)
    with torch.no_grad():
        return pick_batch_size(measure, max_batch=max_batch, memory_budget=budget)


def process_rss() -> int | None:
    """This process's resident memory now (Linux), None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss() -> int | None:
    """The process's resident high-water mark (over its whole life: a conservative peak)."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
    except (ImportError, OSError):
        return None


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (what can be allocated without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
