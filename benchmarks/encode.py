"""Encoder throughput of the tokenizer families: img/s and achieved FLOP/s.

    python benchmarks/encode.py                                   # VAR VQ-VAE, released config, 256², fp32+bf16, batch 8
    python benchmarks/encode.py --families var-vqvae --sizes 256,512 --batch-sizes 1,4,8 --channels-last --compile
    python benchmarks/encode.py --device cuda --sizes 256,512 --batch-sizes 16,64,256 --channels-last both \\
        --compile both --iters 10 --warmup 3                      # the full GPU sweep

--channels-last and --compile take off | on | both (bare flag = on); every combination of the
listed families, sizes, precisions, batch sizes, layouts and compile modes is run.

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
              iters: int, warmup: int, device: str, config: dict | None, checkpoint: str | None = None) -> dict:
    tok = load_tokenizer(family, checkpoint, config=config, precision=precision, device=device)
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


def _modes(choice: str) -> list[bool]:
    return {"off": [False], "on": [True], "both": [False, True]}[choice]


def load_runs(families: str, config: str | None, configs_json: str | None) -> list[tuple[str, dict | None, str | None]]:
    """(family, constructor config, checkpoint) per model to benchmark: the --configs-json list
    ([{"name": family, "config": {...}, "checkpoint": optional}, ...]) or --families with --config."""
    if not configs_json:
        cfg = json.loads(config) if config else None
        return [(family, cfg, None) for family in families.split(",")]
    with open(configs_json) as f:
        entries = json.load(f)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
        raise SystemExit(f"--configs-json {configs_json}: expected a JSON list of {{\"name\", \"config\", \"checkpoint\"}}")
    return [(e["name"], e.get("config"), e.get("checkpoint")) for e in entries]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="var-vqvae")
    p.add_argument("--sizes", default="256")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batch-sizes", default="8")
    p.add_argument("--channels-last", nargs="?", const="on", default="off", choices=["off", "on", "both"])
    p.add_argument("--compile", nargs="?", const="on", default="off", choices=["off", "on", "both"])
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", default=None, help="JSON constructor config (default: the released model)")
    p.add_argument("--configs-json", default=None,
                   help='JSON file: [{"name": family, "config": {...}, "checkpoint": optional}, ...] '
                        '(replaces --families/--config)')
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "encode.jsonl"))
    args = p.parse_args(argv)
    runs = load_runs(args.families, args.config, args.configs_json)
    stamp = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
             "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(f"# {stamp}")
    print(f"{'family':<10} {'size':>5} {'prec':>5} {'batch':>5} {'cl':>3} {'cmp':>3} {'img/s':>8} "
          f"{'s/batch':>8} {'GFLOP/img':>10} {'TFLOP/s':>8}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    for family, config, checkpoint in runs:
        for size in map(int, args.sizes.split(",")):
            for precision in args.precisions.split(","):
                for batch, channels_last, compile_model in (
                        (b, cl, cm) for b in map(int, args.batch_sizes.split(","))
                        for cl in _modes(args.channels_last) for cm in _modes(args.compile)):
                    r = bench_one(family, size, precision, batch, channels_last=channels_last,
                                  compile_model=compile_model, iters=args.iters, warmup=args.warmup,
                                  device=args.device, config=config, checkpoint=checkpoint)
                    print(f"{family:<10} {size:>5} {precision:>5} {batch:>5} {int(channels_last):>3} "
                          f"{int(compile_model):>3} {r['img_per_s']:>8.3f} {r['s_per_batch']:>8.2f} "
                          f"{r['gflop_per_img']:>10.1f} {r['achieved_tflop_s']:>8.3f}", flush=True)
                    with open(args.json, "a") as f:  # config None = the released model
                        f.write(json.dumps({**stamp, **r, "config": config, "checkpoint": checkpoint}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
