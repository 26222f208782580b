"""Nearest-code lookup on the unit sphere (LlamaGen / FlexVAR / SVQVAE `VectorQuantizer`).

Latent vectors and codebook rows are both l2-normalised at lookup time (the stored rows need not be
unit-norm), the distance is ||z||^2 + ||e||^2 - 2 z.e in float32, and the quantised vector is the
*normalised* row, so decoding from indices normalises too. A zero latent vector normalises to 0;
every distance is then ||e_j||^2, and the argmin is whichever normalised row rounds smallest in
float32, not index 0 (the reference's behaviour, which this reproduces by computing the same way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.tokenizers.quantizers.base import Quantizer, QuantizerOutput, channels_last_rows, nearest_code_l2

# Rows x codes per distance block: bounds memory at ~128 MiB of float32 for any latent size.
_DISTANCE_BLOCK = 32 * 1024 * 1024


class L2NormQuantizer(Quantizer):
    """Quantiser with an `embedding` (V, C) codebook; `usage_buffer` keeps the reference's
    training-only `codebook_used` (65536,) buffer so its checkpoints load strictly."""

    def __init__(self, codebook_size: int, dim: int, *, l2_norm: bool = True, usage_buffer: bool = True) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.l2_norm = l2_norm
        # _weight skips Embedding's N(0, 1) init, which the reference overwrites anyway.
        self.embedding = nn.Embedding(codebook_size, dim, _weight=torch.empty(codebook_size, dim))
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if l2_norm:
            with torch.no_grad():
                w = self.embedding.weight
                w.div_(w.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(1e-12))
        if usage_buffer:
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        """The rows the lookup compares against and returns (normalised when l2_norm)."""
        weight = self.embedding.weight.float()
        return F.normalize(weight, p=2, dim=-1) if self.l2_norm else weight

    def forward(self, latent: torch.Tensor) -> QuantizerOutput:
        """latent (B, C, H, W) -> indices (B, H, W) and quantised latent (B, C, H, W)."""
        if latent.ndim != 4 or latent.shape[1] != self.dim:
            raise ValueError(f"expected a (B, {self.dim}, H, W) latent, got {tuple(latent.shape)}")
        b, _, h, w = latent.shape
        with torch.autocast(latent.device.type, enabled=False):
            rows = channels_last_rows(latent.float())
            if self.l2_norm:
                rows = F.normalize(rows, p=2, dim=-1)
            codebook = self.codebook()
            block = max(1, _DISTANCE_BLOCK // self.codebook_size)
            indices = torch.cat([nearest_code_l2(rows[i:i + block], codebook)
                                 for i in range(0, rows.shape[0], block)]) if rows.shape[0] else \
                torch.zeros(0, dtype=torch.long, device=latent.device)
            indices = indices.reshape(b, h, w)
        return QuantizerOutput(indices=indices, quantized=self.lookup(indices))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, H, W) -> codebook vectors (B, C, H, W), float32."""
        if indices.ndim != 3:
            raise ValueError(f"expected (B, H, W) indices, got shape {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"indices out of range [0, {self.codebook_size})")
        with torch.autocast(indices.device.type, enabled=False):
            return self.codebook()[indices.long()].permute(0, 3, 1, 2).contiguous()
