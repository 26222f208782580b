"""Training forward of GQ: a Gaussian VAE held at log2(codebook size) bits per sub-vector
(tokenizers_spec 2.8, the target divergence constraint), later used through the `gq` tokenizer.

Train mode is the reference regulariser's: the decoder sees the reparameterised sample
mu + sigma * eps, not codes. Per channel KL in bits = log2(e) * 0.5 (mu^2 + sigma^2 - 1 - log sigma^2),
summed over each sub-vector's components (the quantizer's own channel layout); each sub-vector's
KL is weighted lam_max above T + tol, 1 inside the band, lam_min below T - tol (T = int(log2 N));
summed over positions and sub-vectors, averaged over the batch, times lam. After every step
(factor 1.01): lam up if mean bits > T else down; lam_max up if max bits > T + tol else down,
clamped to [1, 1e3]; lam_min down if min bits < T - tol else up, clamped to [1e-3, 1].
"""

from __future__ import annotations

import math

import torch

from pipeline.tokenizer_training.var_forward import ForwardOutput
from pipeline.tokenizers.quantizers.gaussian import split_subvectors

LOG2_E = 1.4426950408889634


class GQRegularizer:
    """The TDC weights (plain floats, as the reference; a resumed run restarts them at 1)."""

    def __init__(self, tok, tolerance: float = 0.5, factor: float = 1.01) -> None:
        q = tok.quantizer
        self.dim, self.layout, self.logvar_range = q.dim, q.layout, q.logvar_range
        self.target = float(int(math.log2(q.codebook_size)))
        self.tolerance, self.factor = float(tolerance), float(factor)
        self.lam, self.lam_min, self.lam_max = 1.0, 1.0, 1.0
        self.last_bits: torch.Tensor | None = None

    def bits_per_subvector(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """(B, M) KL bits of each sub-vector of each image (M = positions x sub-vectors)."""
        kl = LOG2_E * 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
        n_groups = mu.shape[1] // self.dim
        return split_subvectors(kl, n_groups, self.layout).sum(-1).reshape(mu.shape[0], -1)

    def loss(self, bits: torch.Tensor) -> torch.Tensor:
        t, tol = self.target, self.tolerance
        weight = torch.where(bits > t + tol, self.lam_max, torch.where(bits < t - tol, self.lam_min, 1.0))
        return self.lam * (weight.detach() * bits).sum(1).mean()

    def update(self, out: ForwardOutput) -> dict[str, float]:
        bits = self.last_bits
        if bits is None:
            return {}
        t, tol, f = self.target, self.tolerance, self.factor
        mean, high, low = global_bit_stats(bits)
        self.lam = self.lam * f if mean > t else self.lam / f
        self.lam_max = min(1e3, max(1.0, self.lam_max * f if high > t + tol else self.lam_max / f))
        self.lam_min = min(1.0, max(1e-3, self.lam_min / f if low < t - tol else self.lam_min * f))
        return {"kl_bits_mean": mean, "kl_bits_max": high, "kl_bits_min": low, "lam": self.lam,
                "lam_min": self.lam_min, "lam_max": self.lam_max}


def global_bit_stats(bits: torch.Tensor) -> tuple[float, float, float]:
    """(mean, max, min) of the KL bits over every worker's batch, so that under DDP each rank
    takes the same lam steps (and the lam-weighted losses stay identical across ranks); on one
    process just the batch's own."""
    import torch.distributed as dist

    stats = torch.stack([bits.sum(), torch.tensor(float(bits.numel()), device=bits.device), bits.max(), -bits.min()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums, maxes = stats[:2].clone(), stats[2:].clone()
        dist.all_reduce(sums)
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
        stats = torch.cat([sums, maxes])
    return float(stats[0] / stats[1]), float(stats[2]), float(-stats[3])


def gq_forward(model, x: torch.Tensor, tok, reg: GQRegularizer, kl_weight: float = 0.1) -> ForwardOutput:
    moments = model.encoder(x)
    c = moments.shape[1] // 2
    with torch.autocast(x.device.type, enabled=False):
        mu, logvar = moments[:, :c].float(), moments[:, c:].float().clamp(*reg.logvar_range)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        bits = reg.bits_per_subvector(mu, logvar)
        reg.last_bits = bits.detach()
        loss = kl_weight * reg.loss(bits)
    return ForwardOutput(recon=model.decoder(z), quant_loss=loss)
