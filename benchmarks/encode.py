"""Encoder throughput of the tokenizer families: img/s and achieved FLOP/s.

    python benchmarks/encode.py                                   # VAR VQ-VAE, released config, 256², fp32+bf16, batch 8
    python benchmarks/encode.py --families var-vqvae --sizes 256,512 --batch-sizes 1,4,8 --channels-last --compile

Weights are seeded random (no download); the timed call is the full `tok.encode` (encoder +
quantiser), on pre-made tensors. FLOPs come from torch's FlopCounterMode on one batch.
Results are printed as a table and appended as JSON lines to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pipeline.tokenizers import load_tokenizer  # noqa: E402


def count_flops(tok, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        tok.encode(x)
    return float(counter.get_total_flops())


def bench_one(family: str, size: int, precision: str, batch: int, *, channels_last: bool, compile_model: bool,
              iters: int, warmup: int, device: str, config: dict | None) -> dict:
    tok = load_tokenizer(family, config=config, precision=precision, device=device)
    if channels_last:
        tok.model.to(memory_format=torch.channels_last)
    if compile_model:
        tok.model.encoder = torch.compile(tok.model.encoder)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    flops = count_flops(tok, x[:1]) * batch
    t0 = time.perf_counter()
    for _ in range(warmup):
        tok.encode(x)
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        tok.encode(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "family": family, "size": size, "precision": precision, "batch": batch, "channels_last": channels_last,
        "compile": compile_model, "device": device, "img_per_s": batch / med, "s_per_batch": med,
        "s_per_batch_all": times, "warmup_s": first, "gflop_per_img": flops / batch / 1e9,
        "achieved_tflop_s": flops / med / 1e12, "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="var-vqvae")
    p.add_argument("--sizes", default="256")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batch-sizes", default="8")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", default=None, help="JSON constructor config (default: the released model)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "encode.jsonl"))
    args = p.parse_args(argv)
    config = json.loads(args.config) if args.config else None
    stamp = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
             "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(f"# {stamp}")
    print(f"{'family':<10} {'size':>5} {'prec':>5} {'batch':>5} {'cl':>3} {'cmp':>3} {'img/s':>8} "
          f"{'s/batch':>8} {'GFLOP/img':>10} {'TFLOP/s':>8}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    for family in args.families.split(","):
        for size in map(int, args.sizes.split(",")):
            for precision in args.precisions.split(","):
                for batch in map(int, args.batch_sizes.split(",")):
                    r = bench_one(family, size, precision, batch, channels_last=args.channels_last,
                                  compile_model=args.compile, iters=args.iters, warmup=args.warmup,
                                  device=args.device, config=config)
                    print(f"{family:<10} {size:>5} {precision:>5} {batch:>5} {int(args.channels_last):>3} "
                          f"{int(args.compile):>3} {r['img_per_s']:>8.3f} {r['s_per_batch']:>8.2f} "
                          f"{r['gflop_per_img']:>10.1f} {r['achieved_tflop_s']:>8.3f}", flush=True)
                    with open(args.json, "a") as f:
                        f.write(json.dumps({**stamp, **r}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
