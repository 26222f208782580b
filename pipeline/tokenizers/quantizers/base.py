"""The uniform quantizer interface: a latent goes in, indices and the quantized latent come out.

Every family's quantizer is an nn.Module with

    out = quantizer(latent)                  # QuantizerOutput(indices, quantized, loss)
    latent_hat = quantizer.lookup(indices)   # indices -> quantized latent (decode path)

`latent` is channel-first (B, C, H, W). `indices` is (B, H, W) or (B, H, W, G) for grouped codes;
multi-scale quantizers return a list of those, one per scale. Nearest-code searches always run in
float32 with autocast off, so bf16 encoders still pick codes reproducibly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    indices: torch.Tensor | list[torch.Tensor]
    quantized: torch.Tensor
    loss: torch.Tensor | None = None


class Quantizer(nn.Module):
    """Base class; subclasses implement `forward` and `lookup`."""

    codebook_size: int = 0
    groups: int = 1

    def forward(self, latent: torch.Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def lookup(self, indices):  # pragma: no cover - interface
        raise NotImplementedError


def nearest_code_l2(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_j ||z - e_j||^2 for rows z (N, C) and codebook (V, C), as the references compute it:
    ||z||^2 + ||e||^2 - 2 z.e in float32, first index on exact ties."""
    z = z.float()
    e = codebook.float()
    with torch.autocast(z.device.type, enabled=False):
        d = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2.0 * (z @ e.t())
    return d.argmin(dim=1)


def nearest_code_cosine(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmax_j cos(z, e_j) with both sides l2-normalised (first index on exact ties)."""
    z = nn.functional.normalize(z.float(), dim=1)
    e = nn.functional.normalize(codebook.float(), dim=1)
    with torch.autocast(z.device.type, enabled=False):
        return (z @ e.t()).argmax(dim=1)


def channels_last_rows(latent: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C) in (b, row, column) order."""
    return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1])
