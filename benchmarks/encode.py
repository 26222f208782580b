"""Encoder throughput of the tokenizer families: img/s and achieved FLOP/s.

    python benchmarks/encode.py                                   # VAR VQ-VAE, released config, 256², fp32+bf16, batch 8
    python benchmarks/encode.py --families var-vqvae --sizes 256,512 --batch-sizes 1,4,8 --channels-last --compile
    python benchmarks/encode.py --device cuda --sizes 256,512 --batch-sizes 16,64,256 --channels-last both \\
        --compile both --iters 10 --warmup 3                      # the full GPU sweep

--channels-last and --compile take off | on | both (bare flag = on); every combination of the
listed families, sizes, precisions, batch sizes, layouts and compile modes is run.

Side by side (`--side-by-side`, fp32): per model, the reference's forward (var-vqvae: the
official op order, benchmarks/reference_vqvae.py), our default forward and our channels-last
forward on the same weights, alternated in one run on real photos, with the tokens of each arm
compared with the baseline over every bundled photo (and a fixture's inputs); see side_by_side.py.

    python benchmarks/encode.py --side-by-side --families var-vqvae --config '{}' --batch-sizes 4 --iters 3
    python benchmarks/encode.py --side-by-side --configs-json benchmarks/side_by_side_models.json

Weights are seeded random (no download); the timed call is the full `tok.encode` (encoder +
quantiser), on pre-made tensors. FLOPs come from torch's FlopCounterMode on one batch.
Results are printed as a table and appended as JSON lines to --json.

Fraction of peak ("%peak"): achieved FLOP/s over the device's dense peak for the precision: on
GPUs the datasheet bf16/fp32 dense peak of known parts (BF16_PEAK_TFLOPS; --peak-tflops overrides),
and over a measured large matmul in the same precision (`matmul_tflops`, what the device reaches
on the friendliest kernel). A batch size that does not fit is reported as OOM and skipped.
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

# Dense (no sparsity) datasheet peaks, TFLOP/s: bf16 tensor cores and fp32 (non-tensor) per GPU name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
FP32_PEAK_TFLOPS = {"H200": 67.0, "H100 SXM": 67.0, "H100 80GB HBM3": 67.0, "H100 PCIe": 51.0,
                    "H100": 51.0, "A100": 19.5, "L40S": 91.6, "L4": 30.3}


def datasheet_peak(gpu_name: str | None, precision: str) -> float | None:
    """The first table entry whose key is in the device name (longest keys first), else None."""
    if not gpu_name:
        return None
    table = BF16_PEAK_TFLOPS if precision == "bf16" else FP32_PEAK_TFLOPS
    for key in sorted(table, key=len, reverse=True):
        if key in gpu_name:
            return table[key]
    return None


def matmul_tflops(device: str, precision: str, n: int | None = None, iters: int = 10) -> float:
    """Achieved TFLOP/s of an n x n matmul in `precision` on `device` (a practical ceiling)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = n or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.perf_counter() - t) / 1e12


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


def side_by_side_main(args: argparse.Namespace) -> int:
    """--side-by-side: one JSON line per (model, size, batch, arm) into --json."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import append_jsonl, conditions
    from side_by_side import bundled_photos, format_row, run_entry

    if args.configs_json:
        with open(args.configs_json) as f:
            entries = json.load(f)
    else:
        cfg = json.loads(args.config) if args.config else None
        entries = [{"name": family, "config": cfg} for family in args.families.split(",")]
    stamp = {"benchmark": "encode_side_by_side", **conditions(args.device)}
    print(f"# {json.dumps(stamp)}", flush=True)
    photos = bundled_photos()
    print(f"{'model':<22} {'size':>4} {'batch':>5} {'arm':<14} {'img/s':>8} {'vs base':>7}  identity", flush=True)
    for entry in entries:
        for size in map(int, str(entry.get("size") or args.sizes).split(",")):
            for batch in map(int, args.batch_sizes.split(",")):
                for row in run_entry(entry, size, batch, args.iters, args.warmup, photos,
                                     check_identity=not args.no_identity, device=args.device):
                    print(format_row(row), flush=True)
                    append_jsonl(args.json, {**stamp, **row, "config": entry.get("config"),
                                             "checkpoint": entry.get("checkpoint"), "options": entry.get("options")})
    return 0


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
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak for the precision (default: datasheet table on known GPUs)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "encode.jsonl"))
    p.add_argument("--side-by-side", action="store_true",
                   help="reference vs ours vs channels-last, alternated, with token identity (fp32, CPU or GPU)")
    p.add_argument("--no-identity", action="store_true", help="--side-by-side: time only, skip the token comparison")
    args = p.parse_args(argv)
    if args.side_by_side:
        return side_by_side_main(args)
    runs = load_runs(args.families, args.config, args.configs_json)
    stamp = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
             "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(f"# {stamp}")
    peaks = {}
    for precision in args.precisions.split(","):
        if precision == "bf16" and not args.device.startswith("cuda"):
            peaks[precision] = (args.peak_tflops, None)  # emulated bf16 on CPUs: no meaningful ceiling
            continue
        peaks[precision] = (args.peak_tflops or datasheet_peak(stamp["gpu"], precision),
                            matmul_tflops(args.device, precision))
        print(f"# {precision}: datasheet peak {peaks[precision][0]} TFLOP/s, measured matmul "
              f"{peaks[precision][1]:.3f} TFLOP/s")
    print(f"{'family':<10} {'size':>5} {'prec':>5} {'batch':>5} {'cl':>3} {'cmp':>3} {'img/s':>8} "
          f"{'s/batch':>8} {'GFLOP/img':>10} {'TFLOP/s':>8} {'%peak':>6} {'%matmul':>7}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    for family, config, checkpoint in runs:
        for size in map(int, args.sizes.split(",")):
            for precision in args.precisions.split(","):
                for batch, channels_last, compile_model in (
                        (b, cl, cm) for b in map(int, args.batch_sizes.split(","))
                        for cl in _modes(args.channels_last) for cm in _modes(args.compile)):
                    try:
                        r = bench_one(family, size, precision, batch, channels_last=channels_last,
                                      compile_model=compile_model, iters=args.iters, warmup=args.warmup,
                                      device=args.device, config=config, checkpoint=checkpoint)
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        print(f"{family:<10} {size:>5} {precision:>5} {batch:>5} {int(channels_last):>3} "
                              f"{int(compile_model):>3}      OOM", flush=True)
                        continue
                    peak, matmul = peaks[precision]
                    r["peak_tflop_s"], r["matmul_tflop_s"] = peak, matmul
                    r["fraction_of_peak"] = r["achieved_tflop_s"] / peak if peak else None
                    r["fraction_of_matmul"] = r["achieved_tflop_s"] / matmul if matmul else None
                    pct = lambda v: f"{100 * v:.1f}" if v is not None else "-"
                    print(f"{family:<10} {size:>5} {precision:>5} {batch:>5} {int(channels_last):>3} "
                          f"{int(compile_model):>3} {r['img_per_s']:>8.3f} {r['s_per_batch']:>8.2f} "
                          f"{r['gflop_per_img']:>10.1f} {r['achieved_tflop_s']:>8.3f} "
                          f"{pct(r['fraction_of_peak']):>6} {pct(r['fraction_of_matmul']):>7}", flush=True)
                    with open(args.json, "a") as f:  # config None = the released model
                        f.write(json.dumps({**stamp, **r, "config": config, "checkpoint": checkpoint}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
