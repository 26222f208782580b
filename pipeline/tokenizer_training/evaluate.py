"""Evaluation on held-out crops through the tokenizer's own encode/decode (exactly what the
tokenize job will do): PSNR and SSIM of the full reconstruction, PSNR after each scale, codebook
usage and perplexity per scale (pipeline.tokenizers.metrics), and a reconstruction grid PNG."""

from __future__ import annotations

import io
from typing import Any

import torch

from pipeline.tokenizer_training.losses import psnr, ssim
from pipeline.tokenizers.metrics import code_counts, perplexity_from_counts, usage_from_counts
from pipeline.viz import scale_grid, to_uint8


@torch.no_grad()
def evaluate_tokenizer(tok: Any, crops: torch.Tensor, batch_size: int = 8, grid_rows: int = 4,
                       per_scale_psnr: bool = True) -> tuple[dict[str, Any], bytes | None]:
    """(metrics, PNG bytes of originals + reconstructions per scale for the first `grid_rows` crops)."""
    was_training = tok.model.training
    tok.model.eval()
    try:
        recons, counts, scale_recons, shapes = [], None, None, []
        for start in range(0, crops.shape[0], batch_size):
            x = crops[start:start + batch_size]
            tokens = tok.encode(x)
            shapes = tokens.scale_shapes
            n = len(tokens.grids)
            if counts is None:
                counts = [torch.zeros(tok.groups, tok.vocab_size, dtype=torch.int64) for _ in range(n)]
                scale_recons = [[] for _ in range(n)]
            for k, grid in enumerate(tokens.grids):
                counts[k] += code_counts(grid, tok.vocab_size, tok.groups)
            upto = range(1, n + 1) if per_scale_psnr else [n]
            for k in upto:
                scale_recons[k - 1].append(tok.decode(tokens, upto=k).float().cpu())
            recons.append(scale_recons[n - 1][-1])
        recon = torch.cat(recons)
        x_all = crops.float().cpu()
        metrics: dict[str, Any] = {
            "psnr": float(psnr(recon, x_all).mean()),
            "ssim": float(ssim(recon, x_all)),
            "usage_per_scale": [round(usage_from_counts(c)["pooled"], 4) for c in counts],
            "perplexity_per_scale": [round(perplexity_from_counts(c)["pooled"], 2) for c in counts],
        }
        total = sum(counts)
        metrics["usage"] = usage_from_counts(total)["pooled"]
        metrics["perplexity"] = perplexity_from_counts(total)["pooled"]
        if per_scale_psnr:
            metrics["psnr_per_scale"] = [round(float(psnr(torch.cat(r), x_all).mean()), 3) for r in scale_recons]
        png = None
        if grid_rows > 0 and per_scale_psnr:
            rows = min(grid_rows, crops.shape[0])
            cols = [to_uint8(torch.cat(r)[:rows]) for r in scale_recons]
            image = scale_grid(to_uint8(x_all[:rows]), cols, [f"{h}x{w}" for h, w in shapes])
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            png = buf.getvalue()
        return metrics, png
    finally:
        tok.model.train(was_training)
