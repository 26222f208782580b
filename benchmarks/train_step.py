"""VAR training step on stored tokens vs tokenizing every batch on the fly (same model, same batch).

    python benchmarks/train_step.py                                  # CPU-sized: VAR d4, released VQ-VAE, batch 4
    python benchmarks/train_step.py --device cuda --depth 16 --batch-size 32 --bf16

stored:   tokens read back (here: computed once up front) -> teacher-forcing input from the
          codebook and phi convs -> forward/backward/AdamW step.
on the fly: the reference recipe: the VQ-VAE encodes the images of the batch every step (fp32,
          as the official trainer), then the same step.
Weights are seeded random (timings do not depend on the values). Prints both step times and
their ratio; appends a JSON line to --json.
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
from pipeline.var import load_var  # noqa: E402
from pipeline.var.recipe import param_groups, token_loss  # noqa: E402


def make_step(model, tok, optimizer, use_bf16: bool):
    device = next(model.parameters()).device

    def step(tokens, labels):
        x = tok.to_var_input(tokens)
        target = tokens.flat().to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(labels, x)
        loss = token_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        return loss

    return step


def timed(fn, iters: int, warmup: int, device: str) -> list[float]:
    times = []
    for i in range(warmup + iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--tokenizer-ch", type=int, default=160, help="VQ-VAE width (160 = released)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the transformer (GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "train_step.jsonl"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    tok = load_tokenizer("var-vqvae", config={"ch": args.tokenizer_ch}, device=args.device)
    model = load_var(None, config={"depth": args.depth}, tokenizer=tok, device=args.device)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    step = make_step(model, tok, optimizer, args.bf16)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=args.device) * 2 - 1
    labels = torch.randint(0, 1000, (args.batch_size,), device=args.device)
    stored = tok.encode(images)  # what the Parquet holds (read time excluded; see note below)

    t_stored = timed(lambda: step(stored, labels), args.iters, args.warmup, args.device)
    print(f"stored-token steps: {[round(t, 3) for t in t_stored]} s", flush=True)
    t_encode = timed(lambda: tok.encode(images), args.iters, args.warmup, args.device)
    print(f"encodes: {[round(t, 3) for t in t_encode]} s", flush=True)
    t_fly = timed(lambda: step(tok.encode(images), labels), args.iters, args.warmup, args.device)
    print(f"on-the-fly steps: {[round(t, 3) for t in t_fly]} s", flush=True)
    res = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "threads": torch.get_num_threads(), "depth": args.depth, "var_params": model.num_params(),
        "tokenizer_ch": args.tokenizer_ch, "batch": args.batch_size, "image_size": args.image_size,
        "tokens_per_image": stored.num_tokens, "bf16": args.bf16,
        "stored_step_s": statistics.median(t_stored), "encode_s": statistics.median(t_encode),
        "on_the_fly_step_s": statistics.median(t_fly),
    }
    res["ratio_on_the_fly_vs_stored"] = res["on_the_fly_step_s"] / res["stored_step_s"]
    print(f"VAR d{args.depth} ({res['var_params'] / 1e6:.1f}M params), VQ-VAE ch{args.tokenizer_ch}, batch "
          f"{args.batch_size} x {args.image_size}px, {args.device} ({res['threads']} threads), median of {args.iters}:")
    print(f"  step on stored tokens   {res['stored_step_s']:8.3f} s")
    print(f"  encode the batch        {res['encode_s']:8.3f} s")
    print(f"  step encoding on the fly{res['on_the_fly_step_s']:8.3f} s")
    print(f"  ratio on-the-fly / stored: {res['ratio_on_the_fly_vs_stored']:.2f}x")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
