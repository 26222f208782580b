"""GSQ's lookup: nearest codebook row after l2-normalising both sides ("spherical" search),
decoding with the raw stored rows.

Reference: HelmholtzAI-FZJ/flex_gen `VectorQuantizer` (`vq`, ungrouped) and `GroupVectorQuantizer`
(`gvq`: the D channels split into G contiguous groups of D/G, one codebook shared by all groups),
which is what the released GSQ checkpoints instantiate. Distances are the reference's
||x||^2 + ||e||^2 - 2 x.e in float32, argmin with the first row winning exact ties — which matters
for an all-zero latent vector: it normalises to zero, every distance is ||e_j||^2 = 1 +- ulp, and
the answer is the row whose normalised squared norm rounds smallest, exactly as in the reference.

The distance matrix is computed in blocks of at most `chunk_elements` floats, so 256k-512k row
codebooks fit in memory (the reference loops per image above 256000 rows and still builds a
(H*W*G, V) matrix per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.tokenizers.quantizers.base import Quantizer, QuantizerOutput

MAX_CODEBOOK_BLOCK = 1 << 16


def normalise_rows(x: torch.Tensor, p: int | None) -> torch.Tensor:
    """F.normalize(x, p, dim=-1) (eps 1e-12) as the reference's lookup regularisation; p=None: as is."""
    return x if p is None else F.normalize(x, p=p, dim=-1)


def nearest_rows(x: torch.Tensor, codebook: torch.Tensor, *, norm_p: int | None = 2,
                 chunk_elements: int = 1 << 24) -> torch.Tensor:
    """argmin_j ||x_i - e_j||^2 over (normalised) rows, x (N, d), codebook (V, d) -> (N,) int64."""
    with torch.autocast(x.device.type, enabled=False):
        x = normalise_rows(x.float(), norm_p)
        e_t = normalise_rows(codebook.float(), norm_p).t()
        x_sq = torch.sum(x ** 2, dim=-1, keepdim=True)
        e_sq = torch.sum(e_t ** 2, dim=0, keepdim=True)  # same reduction as the reference (ties!)
        n, v = x.shape[0], e_t.shape[1]
        cols = min(v, MAX_CODEBOOK_BLOCK, chunk_elements)
        rows = max(1, chunk_elements // cols)
        out = torch.empty(n, dtype=torch.long, device=x.device)
        for r0 in range(0, n, rows):
            xr, xr_sq = x[r0:r0 + rows], x_sq[r0:r0 + rows]
            best = torch.full((xr.shape[0],), float("inf"), device=x.device)
            index = torch.zeros(xr.shape[0], dtype=torch.long, device=x.device)
            for c0 in range(0, v, cols):
                dist = xr_sq + e_sq[:, c0:c0 + cols] - 2 * torch.matmul(xr, e_t[:, c0:c0 + cols])
                arg = dist.argmin(dim=1)
                value = dist.gather(1, arg[:, None]).squeeze(1)
                better = value < best  # strict: an earlier block keeps exact ties (first row wins)
                best = torch.where(better, value, best)
                index = torch.where(better, arg + c0, index)
            out[r0:r0 + rows] = index
        return out


class SphericalQuantizer(Quantizer):
    """latent (B, D, H, W) -> codes (B, H, W) for `vq` or (B, H, W, G) for `gvq`, and the raw
    codebook rows (B, D, H, W). The codebook is `codebook.weight` (V, D/G), as in checkpoints."""

    def __init__(self, num_embed: int, embed_dim: int, num_group: int | None = None, *,
                 norm_p: int | None = 2, chunk_elements: int = 1 << 24) -> None:
        super().__init__()
        groups = 1 if num_group is None else int(num_group)
        if groups < 1 or embed_dim % groups:
            raise ValueError(f"embed_dim {embed_dim} is not divisible into num_group={num_group} groups")
        self.grouped = num_group is not None
        self.groups = groups
        self.codebook_size = int(num_embed)
        self.embed_dim = int(embed_dim)
        self.norm_p = norm_p
        self.chunk_elements = int(chunk_elements)
        self.codebook = nn.Embedding(self.codebook_size, self.embed_dim // groups)

    def forward(self, latent: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = latent.shape
        if d != self.embed_dim:
            raise ValueError(f"latent has {d} channels, the quantiser expects {self.embed_dim}")
        rows = latent.permute(0, 2, 3, 1).reshape(-1, d // self.groups)  # (b, y, x, group) order
        index = nearest_rows(rows, self.codebook.weight, norm_p=self.norm_p, chunk_elements=self.chunk_elements)
        codes = index.reshape(b, h, w, self.groups) if self.grouped else index.reshape(b, h, w)
        return QuantizerOutput(indices=codes, quantized=self.lookup(codes))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes -> raw (un-normalised) codebook rows concatenated over groups, (B, D, H, W)."""
        expected = 4 if self.grouped else 3
        if indices.ndim != expected or (self.grouped and indices.shape[-1] != self.groups):
            shape = "(B, H, W, G=%d)" % self.groups if self.grouped else "(B, H, W)"
            raise ValueError(f"expected codes of shape {shape}, got {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        b, h, w = indices.shape[:3]
        rows = self.codebook.weight[indices.long()]  # (B, H, W[, G], D/G)
        return rows.reshape(b, h, w, self.embed_dim).permute(0, 3, 1, 2).contiguous()
