"""VAR's multi-scale residual quantizer (`VectorQuantizer2`): one codebook shared by all scales.

For scales k = 0..K-1 (small to large) the residual f_rest is area-downsampled to the scale's
grid, every cell takes its nearest code, the code map is bicubic-upsampled back to the latent size
and refined by a phi convolution; the result is added to f_hat and subtracted from f_rest. The
last scale is the latent's own size and is never resampled. Everything here runs in float32 with
autocast off, like the reference, so bf16 encoders still choose codes reproducibly.

Grids may be non-square: scale k of a latent H x W has `scale_shapes(patch_nums, H, W)[k]`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.tokenizers.quantizers.base import Quantizer, QuantizerOutput


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h)."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


def phi_ticks(count: int) -> np.ndarray:
    # float64 numpy on purpose: several scales sit exactly half-way between two ticks and the
    # reference's rounding decides the winner (exact or float32 arithmetic picks other convs).
    if count == 4:
        return np.linspace(1 / 3 / count, 1 - 1 / 3 / count, count)
    return np.linspace(1 / 2 / count, 1 - 1 / 2 / count, count)


def phi_index(scale: int, num_scales: int, count: int) -> int:
    """Which of `count` phi convs scale `scale` of `num_scales` uses."""
    at = scale / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(phi_ticks(count) - at)).item())


class PhiSet(nn.Module):
    """The phi convs with the reference's three sharing layouts (and state-dict key names):
    share=1 -> `qresi`, share=0 -> one per scale `{k}`, share=K>1 -> `qresi_ls.{k}`."""

    def __init__(self, channels: int, ratio: float, share: int, num_scales: int) -> None:
        super().__init__()
        self.share = share
        if abs(ratio) <= 1e-6:
            self.count, self.mode = 1, "identity"
        elif share == 1:
            self.qresi = Phi(channels, ratio)
            self.count, self.mode = 1, "shared"
        elif share == 0:
            for k in range(num_scales):
                self.add_module(str(k), Phi(channels, ratio))
            self.count, self.mode = num_scales, "per-scale"
        else:
            self.qresi_ls = nn.ModuleList([Phi(channels, ratio) for _ in range(share)])
            self.count, self.mode = share, "partially-shared"

    def get(self, scale: int, num_scales: int) -> nn.Module:
        if self.mode == "identity":
            return nn.Identity()
        if self.mode == "shared":
            return self.qresi
        idx = phi_index(scale, num_scales, self.count)
        return getattr(self, str(idx)) if self.mode == "per-scale" else self.qresi_ls[idx]


def scale_shapes(patch_nums: Sequence[int], height: int, width: int) -> list[tuple[int, int]]:
    """Grid (h, w) of each scale for a latent of height x width; the last scale is the latent.

    For the square latent the schedule was made for (side == patch_nums[-1]) these are (pn, pn).
    Other sizes scale each side proportionally (at least one cell)."""
    last = patch_nums[-1]
    shapes = [(max(1, round(p * height / last)), max(1, round(p * width / last))) for p in patch_nums[:-1]]
    return shapes + [(height, width)]


class MultiScaleResidualQuantizer(Quantizer):
    def __init__(self, vocab_size: int, channels: int, patch_nums: Sequence[int], *, using_znorm: bool = False,
                 beta: float = 0.25, quant_resi: float = 0.5, share_quant_resi: int = 4) -> None:
        super().__init__()
        self.codebook_size = vocab_size
        self.channels = channels
        self.patch_nums = tuple(patch_nums)
        self.using_znorm = using_znorm
        self.beta = beta
        self.embedding = nn.Embedding(vocab_size, channels)
        self.quant_resi = PhiSet(channels, quant_resi, share_quant_resi, len(self.patch_nums))
        # Usage statistics buffer of the reference's VAE training; kept for checkpoint layout.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    # ------------------------------------------------------------------ helpers
    def _nearest(self, z_nc: torch.Tensor) -> torch.Tensor:
        codebook = self.embedding.weight
        if self.using_znorm:
            return (F.normalize(z_nc, dim=1) @ F.normalize(codebook, dim=1).t()).argmax(dim=1)
        # ||z||^2 + ||e||^2 - 2 z.e with the reference's addmm so the rounding matches.
        d = z_nc.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1)
        d.addmm_(z_nc, codebook.t(), alpha=-2, beta=1)
        return d.argmin(dim=1)

    def _code_map(self, idx_bhw: torch.Tensor) -> torch.Tensor:
        return self.embedding(idx_bhw).permute(0, 3, 1, 2).contiguous()

    def _refine(self, code_map: torch.Tensor, scale: int, num_scales: int, size: tuple[int, int]) -> torch.Tensor:
        """Upsample a scale's code map to the latent size (except the last scale) and apply phi."""
        if scale != num_scales - 1:
            code_map = F.interpolate(code_map, size=size, mode="bicubic")
        return self.quant_resi.get(scale, num_scales)(code_map)

    # ------------------------------------------------------------------ interface
    def forward(self, latent: torch.Tensor, patch_nums: Sequence[int] | None = None) -> QuantizerOutput:
        """latent (B, C, H, W) -> indices per scale [(B, h_k, w_k)], f_hat (B, C, H, W)."""
        pn = tuple(patch_nums) if patch_nums is not None else self.patch_nums
        with torch.autocast(latent.device.type, enabled=False):
            f = latent.float()
            b, c, h, w = f.shape
            shapes = scale_shapes(pn, h, w)
            f_rest, f_hat = f.clone(), torch.zeros_like(f)
            indices, n = [], len(shapes)
            for k, (ph, pw) in enumerate(shapes):
                z = F.interpolate(f_rest, size=(ph, pw), mode="area") if k != n - 1 else f_rest
                idx = self._nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, ph, pw)
                refined = self._refine(self._code_map(idx), k, n, (h, w))
                f_hat.add_(refined)
                f_rest.sub_(refined)
                indices.append(idx)
        return QuantizerOutput(indices=indices, quantized=f_hat)

    def lookup(self, indices: Sequence[torch.Tensor], latent_size: tuple[int, int] | None = None,
               num_scales: int | None = None) -> torch.Tensor:
        """f_hat after the given scales (the first len(indices) of a schedule of `num_scales`)."""
        return self.cumulative_fhat(indices, latent_size, num_scales)[-1]

    def cumulative_fhat(self, indices: Sequence[torch.Tensor], latent_size: tuple[int, int] | None = None,
                        num_scales: int | None = None) -> list[torch.Tensor]:
        n = num_scales or len(indices)
        h, w = latent_size or tuple(indices[-1].shape[1:3])
        with torch.autocast(indices[0].device.type, enabled=False):
            f_hat = torch.zeros(indices[0].shape[0], self.channels, h, w, device=indices[0].device)
            out = []
            for k, idx in enumerate(indices):
                f_hat = f_hat + self._refine(self._code_map(idx), k, n, (h, w))
                out.append(f_hat)
        return out

    def to_var_input(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input (B, L - first scale, C): after each scale k < K-1, the running
        f_hat area-downsampled to scale k+1's grid, flattened row-major."""
        n = len(indices)
        h, w = tuple(indices[-1].shape[1:3])
        with torch.autocast(indices[0].device.type, enabled=False):
            f_hat = torch.zeros(indices[0].shape[0], self.channels, h, w, device=indices[0].device)
            inputs = []
            for k in range(n - 1):
                f_hat.add_(self._refine(self._code_map(indices[k]), k, n, (h, w)))
                nxt = tuple(indices[k + 1].shape[1:3])
                inputs.append(F.interpolate(f_hat, size=nxt, mode="area").flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def next_autoregressive_input(self, scale: int, num_scales: int, f_hat: torch.Tensor, code_map: torch.Tensor,
                                  next_size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale `scale`'s code map (B, C, h, w) to f_hat; return (f_hat, input for the next scale)
        where the next input is f_hat area-downsampled to `next_size` (f_hat itself after the last)."""
        size = tuple(f_hat.shape[-2:])
        with torch.autocast(f_hat.device.type, enabled=False):
            f_hat = f_hat + self._refine(code_map.float(), scale, num_scales, size)
            if scale == num_scales - 1 or next_size is None:
                return f_hat, f_hat
            return f_hat, F.interpolate(f_hat, size=next_size, mode="area")
