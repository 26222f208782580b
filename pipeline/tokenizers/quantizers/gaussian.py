"""Gaussian Quant (GQ): a Gaussian VAE posterior turned into codes of a fixed prior-sample codebook.

Reference: tongdaxu/VQ-VAE-from-Gaussian-VAE `pit/quantization/gaussian.py` (eval mode,
`GaussianQuantRegularizer`, format "bchw"). The codebook is not learned and not stored in
checkpoints: it is regenerated from a scrambled Sobol sequence pushed through the normal inverse
CDF. A sub-vector with posterior N(mu, sigma^2) picks the codebook row s maximising the log density
ratio  sum_d [log N(s_d; mu_d, sigma_d^2) - beta * log N(s_d; 0, 1)]  (first row on ties), which is
NOT the nearest row to mu: sigma weights each dimension and the prior term favours large |s|.

Search strategy (same answers as the reference, much less work): a matmul of an expanded form ranks
every row, then only the rows that rounding could let beat the leader are re-scored with the
reference's own float32 formula. Rows whose error bound is too wide to trust the expansion (e.g.
logvar clamped at -30, where 1/sigma^2 = 1e13) are scored exactly over the whole codebook.
"""

from __future__ import annotations

import math

import torch

from pipeline.tokenizers.quantizers.base import Quantizer, QuantizerOutput

LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
LAYOUTS = ("strided", "contiguous")
_EPS32 = float(torch.finfo(torch.float32).eps)


def sobol_prior_codebook(n_samples: int, dim: int, seed: int = 42) -> torch.Tensor:
    """(n_samples, dim) float32 table: scrambled Sobol points -> standard-normal quantiles.

    The reference maps float32 Sobol draws through scipy's norm.ppf in float64; ndtri on the
    float64-cast draws is bit-identical to that (ndtri in float32 is not).
    """
    if n_samples < 1 or dim < 1:
        raise ValueError(f"need n_samples >= 1 and dim >= 1, got {n_samples}, {dim}")
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    draws = engine.draw(n_samples, dtype=torch.float32)
    return torch.special.ndtri(draws.double()).float()


def split_subvectors(latent: torch.Tensor, n_groups: int, layout: str) -> torch.Tensor:
    """(B, c, H, W) -> (B*H*W*n_groups, c // n_groups) rows in (b, y, x, group) order.

    strided:    sub-vector j = channels {j, j + n_g, j + 2 n_g, ...}  (GaussianQuantRegularizer)
    contiguous: sub-vector j = channels [j * dim, (j + 1) * dim)      (GaussianQuantRegularizer2)
    """
    b, c, h, w = latent.shape
    dim = c // n_groups
    rows = latent.permute(0, 2, 3, 1)  # (B, H, W, c)
    if layout == "strided":
        rows = rows.reshape(b, h, w, dim, n_groups).transpose(-1, -2)
    else:
        rows = rows.reshape(b, h, w, n_groups, dim)
    return rows.reshape(-1, dim)


def merge_subvectors(rows: torch.Tensor, shape: tuple[int, int, int, int], layout: str) -> torch.Tensor:
    """Inverse of `split_subvectors`: rows (B*H*W*n_g, dim) -> (B, c, H, W)."""
    b, c, h, w = shape
    dim = rows.shape[-1]
    n_groups = c // dim
    grid = rows.reshape(b, h, w, n_groups, dim)
    if layout == "strided":
        grid = grid.transpose(-1, -2)
    return grid.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def log_density_ratio(samples: torch.Tensor, mu: torch.Tensor, std: torch.Tensor,
                      prior_log_prob: torch.Tensor, beta: float) -> torch.Tensor:
    """The reference score, op for op as torch.distributions.Normal computes it (float32).

    samples (..., K, d) broadcast against mu/std (..., 1, d); prior_log_prob = log N(samples; 0, 1)
    with the samples' shape. Returns (..., K).
    """
    var = std ** 2
    log_q = -((samples - mu) ** 2) / (2 * var) - std.log() - LOG_SQRT_2PI
    return torch.sum(log_q - prior_log_prob * beta, dim=-1)


class GaussianQuantizer(Quantizer):
    """Moments (B, 2c, H, W) = [mu ; logvar] -> indices (B, H, W, n_g) and the codebook latent (B, c, H, W).

    `dim` is the length of one code vector (the reference's `group`); n_g = c / dim codes per
    position. The codebook is a non-persistent buffer, so checkpoints carry nothing for it.
    """

    def __init__(self, n_samples: int = 65536, dim: int = 16, seed: int = 42, beta: float = 1.0,
                 logvar_range: tuple[float, float] = (-30.0, 20.0), layout: str = "strided",
                 candidates: int = 32, chunk_elements: int = 1 << 24) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.codebook_size = int(n_samples)
        self.dim = int(dim)
        self.seed = int(seed)
        self.beta = float(beta)
        self.logvar_range = (float(logvar_range[0]), float(logvar_range[1]))
        self.layout = layout
        self.candidates = min(int(candidates), self.codebook_size)
        self.chunk_elements = int(chunk_elements)
        samples = sobol_prior_codebook(self.codebook_size, self.dim, self.seed)
        self.register_buffer("codebook", samples, persistent=False)
        # log N(s; 0, 1) exactly as the reference's buffer: -((s - 0)^2) / (2 * 1) - log 1 - log sqrt(2 pi)
        self.register_buffer("prior_log_prob", -(samples ** 2) / 2 - LOG_SQRT_2PI, persistent=False)
        # [s^2, s] per row: the expanded score is one matmul against [(beta - 1/var), 2 mu/var].
        self.register_buffer("expanded_codebook", torch.cat([samples ** 2, samples], dim=1), persistent=False)
        self.register_buffer("abs_max", samples.abs().amax(0), persistent=False)

    # ---------------------------------------------------------------- public interface
    def forward(self, moments: torch.Tensor) -> QuantizerOutput:
        b, c2, h, w = moments.shape
        if c2 % 2 or (c2 // 2) % self.dim:
            raise ValueError(f"moments need 2*c channels with c a multiple of {self.dim}, got {c2}")
        c = c2 // 2
        n_groups = c // self.dim
        with torch.autocast(moments.device.type, enabled=False):
            moments = moments.float()
            mu, logvar = moments[:, :c], moments[:, c:]
            std = torch.exp(0.5 * torch.clamp(logvar, *self.logvar_range))
            mu_rows = split_subvectors(mu, n_groups, self.layout)
            std_rows = split_subvectors(std, n_groups, self.layout)
            index = self.select(mu_rows, std_rows)
            quantized = merge_subvectors(self.codebook[index], (b, c, h, w), self.layout)
        return QuantizerOutput(indices=index.reshape(b, h, w, n_groups), quantized=quantized)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W, n_g) indices -> (B, n_g * dim, H, W) latent (the decoder's input)."""
        if indices.ndim != 4:
            raise ValueError(f"expected (B, H, W, n_groups) indices, got shape {tuple(indices.shape)}")
        self._check_range(indices)
        b, h, w, n_groups = indices.shape
        rows = self.codebook[indices.reshape(-1).long()]
        return merge_subvectors(rows, (b, n_groups * self.dim, h, w), self.layout)

    # ---------------------------------------------------------------- search
    def select(self, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """argmax over codebook rows of the log density ratio, for rows mu/std (M, dim)."""
        if mu.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=mu.device)
        rows = max(1, self.chunk_elements // self.codebook_size)  # bounds the (rows, N) score matrix
        return torch.cat([self._select_chunk(mu[i:i + rows], std[i:i + rows])
                          for i in range(0, mu.shape[0], rows)])

    def _select_chunk(self, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        var = std ** 2
        inv_var = 1.0 / var
        # 2 * score up to a per-row constant: sum_d s^2 (beta - 1/var) + 2 s mu / var
        weights = torch.cat([self.beta - inv_var, 2 * mu * inv_var], dim=1)
        approx = weights @ self.expanded_codebook.t()  # (m, N)
        window = self._error_window(mu, std, inv_var)
        top_val, top_idx = approx.topk(self.candidates, dim=1)
        threshold = top_val[:, :1] - window[:, None]
        # Every row within `window` of the leader might be the reference's answer. They must all be
        # among the candidates; when the last candidate is still inside the window there may be more,
        # and that row is scored exactly over the whole codebook instead.
        within = top_val >= threshold
        overflow = within[:, -1] & (self.candidates < self.codebook_size)
        scores = log_density_ratio(self.codebook[top_idx], mu[:, None], std[:, None],
                                   self.prior_log_prob[top_idx], self.beta)
        scores = torch.where(within, scores, torch.full_like(scores, -math.inf))
        index = _first_argmax(scores, top_idx)
        if overflow.any():
            rows = overflow.nonzero().squeeze(1)
            index[rows] = self._exact_argmax(mu[rows], std[rows])
        return index

    def _error_window(self, mu: torch.Tensor, std: torch.Tensor, inv_var: torch.Tensor) -> torch.Tensor:
        """A bound on how far the expanded matmul (2x scale) and the reference's own float32
        rounding can move two rows' scores relative to each other, doubled for safety."""
        d = self.dim
        smax = self.abs_max
        expanded = (smax ** 2 * (self.beta - inv_var).abs() + 2 * smax * (mu * inv_var).abs()).sum(1)
        reference = 2 * ((smax + mu.abs()) ** 2 * inv_var + abs(self.beta) * smax ** 2
                         + 2 * std.log().abs() + 2).sum(1)
        return 4 * _EPS32 * ((2 * d + 4) * expanded + (d + 6) * reference)

    def _exact_argmax(self, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The reference computation over the whole codebook, chunked over codebook rows."""
        best = torch.full((mu.shape[0],), -math.inf, device=mu.device)
        index = torch.zeros(mu.shape[0], dtype=torch.long, device=mu.device)
        step = max(1, self.chunk_elements // max(1, mu.shape[0] * self.dim))
        for start in range(0, self.codebook_size, step):
            scores = log_density_ratio(self.codebook[None, start:start + step], mu[:, None], std[:, None],
                                       self.prior_log_prob[None, start:start + step], self.beta)
            value, arg = scores.amax(dim=1), scores.argmax(dim=1)
            better = value > best  # strict: an earlier chunk keeps exact ties (first index wins)
            best = torch.where(better, value, best)
            index = torch.where(better, arg + start, index)
        return index

    def _check_range(self, indices: torch.Tensor) -> None:
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")


def _first_argmax(scores: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
    """Per row, the candidate with the highest score; the smallest codebook index on exact ties."""
    best = scores.amax(dim=1, keepdim=True)
    sentinel = torch.iinfo(torch.long).max
    return torch.where(scores == best, candidate_index, torch.full_like(candidate_index, sentinel)).amin(dim=1)
