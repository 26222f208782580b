"""VAR's VQ-VAE encode written out the way the reference code (FoundationVision/VAR
`models/basic_vae.py`, `models/quant.py`, `VQVAE.img_to_idxBl`) runs it, op for op, on the weights
of our `pipeline.tokenizers.var_vqvae.VQVAE` (same parameter names as the official modules).

What it is for: a baseline that shares nothing with our forward code but the weights, so that
`benchmarks/encode.py --side-by-side` times our encoder against the reference's own op order
(in-place SiLU, the attention's contiguous copies, `F.pad` + stride-2 conv, the quantiser's
`addmm_` distances and its float64 phi-tick choice) and the job-path conformance test
(tests/job/test_job_conformance.py) can compare stored tokens with an independent forward.
The official code cannot be imported here (it needs its `dist` module and a hub mixin), so this is
a transcription; tests/job/test_job_conformance.py checks it against the official fixture tokens.

Square latents only, like the reference (it asserts the last patch size equals the latent side).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def resnet_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = block.conv1(F.silu(block.norm1(x), inplace=True))
    h = block.conv2(block.dropout(F.silu(block.norm2(h), inplace=True)))
    return block.nin_shortcut(x) + h


def attn_block(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    qkv = attn.qkv(attn.norm(x))
    b, _, h, w = qkv.shape
    c = qkv.shape[1] // 3
    q, k, v = qkv.reshape(b, 3, c, h, w).unbind(1)
    q = q.view(b, c, h * w).contiguous()
    q = q.permute(0, 2, 1).contiguous()        # B, HW, C
    k = k.view(b, c, h * w).contiguous()       # B, C, HW
    weights = torch.bmm(q, k).mul_(int(c) ** (-0.5))
    weights = F.softmax(weights, dim=2)
    v = v.view(b, c, h * w).contiguous()
    weights = weights.permute(0, 2, 1).contiguous()
    out = torch.bmm(v, weights).view(b, c, h, w).contiguous()
    return x + attn.proj_out(out)


def encoder_forward(enc: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = enc.conv_in(x)
    levels = len(enc.down)
    for level in range(levels):
        stage = enc.down[level]
        for i in range(len(stage.block)):
            h = resnet_block(stage.block[i], h)
            if len(stage.attn) > 0:
                h = attn_block(stage.attn[i], h)
        if level != levels - 1:
            h = stage.downsample.conv(F.pad(h, pad=(0, 1, 0, 1), mode="constant", value=0))
    h = resnet_block(enc.mid.block_2, attn_block(enc.mid.attn_1, resnet_block(enc.mid.block_1, h)))
    return enc.conv_out(F.silu(enc.norm_out(h), inplace=True))


def phi_conv(quantize: nn.Module, at: float) -> nn.Module:
    """The reference's PhiPartiallyShared lookup (float64 numpy ticks, argmin of the distance)."""
    phis = quantize.quant_resi
    if phis.mode == "identity":
        return nn.Identity()
    if phis.mode == "shared":
        return phis.qresi
    if phis.mode == "per-scale":
        raise NotImplementedError("per-scale phi is not part of the released model")
    count = len(phis.qresi_ls)
    ticks = np.linspace(1 / 3 / count, 1 - 1 / 3 / count, count) if count == 4 else \
        np.linspace(1 / 2 / count, 1 - 1 / 2 / count, count)
    return phis.qresi_ls[np.argmin(np.abs(ticks - at)).item()]


def phi_forward(phi: nn.Module, h: torch.Tensor) -> torch.Tensor:
    if isinstance(phi, nn.Identity):
        return h
    ratio = phi.ratio
    return h.mul(1 - ratio) + nn.Conv2d.forward(phi, h).mul_(ratio)


def f_to_idx(quantize: nn.Module, f: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """`VectorQuantizer2.f_to_idxBl_or_fhat(f, to_fhat=False)`: per scale (B, pn*pn) int64."""
    b, c, h, w = f.shape
    if patch_nums[-1] != h or h != w:
        raise ValueError(f"the reference encodes square latents of side patch_nums[-1]; got {h}x{w}")
    f_rest = f.detach().clone()
    f_hat = torch.zeros_like(f_rest)
    codebook = quantize.embedding.weight.data
    out = []
    n = len(patch_nums)
    for si, pn in enumerate(patch_nums):
        if si != n - 1:
            z = F.interpolate(f_rest, size=(pn, pn), mode="area").permute(0, 2, 3, 1).reshape(-1, c)
        else:
            z = f_rest.permute(0, 2, 3, 1).reshape(-1, c)
        d = torch.sum(z.square(), dim=1, keepdim=True) + torch.sum(codebook.square(), dim=1, keepdim=False)
        d.addmm_(z, codebook.T, alpha=-2, beta=1)
        idx = torch.argmin(d, dim=1)
        code_map = quantize.embedding(idx.view(b, pn, pn)).permute(0, 3, 1, 2)
        if si != n - 1:
            code_map = F.interpolate(code_map, size=(h, w), mode="bicubic").contiguous()
        else:
            code_map = code_map.contiguous()
        code_map = phi_forward(phi_conv(quantize, si / (n - 1)), code_map)
        f_hat.add_(code_map)
        f_rest.sub_(code_map)
        out.append(idx.reshape(b, pn * pn))
    return out


@torch.no_grad()
def img_to_idx(model: nn.Module, x: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """`VQVAE.img_to_idxBl(x)`: quant_conv(encoder(x)) then the residual quantiser (fp32, no grad)."""
    f = model.quant_conv(encoder_forward(model.encoder, x))
    return f_to_idx(model.quantize, f, patch_nums)
