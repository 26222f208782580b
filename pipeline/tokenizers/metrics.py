"""Codebook usage and perplexity of token codes, pooled over groups and per group (pure functions).

Definitions follow GSQ's `CodeBookMetric` (flex_gen):
  usage            fraction of the V codebook entries used at least once (counts pooled over groups)
  perplexity       exp(-sum p log(p + 1e-10)) of the pooled code distribution (natural log)
  per group        the same for each group's own counts
  usage_product    product over groups of the per-group usage fractions (GSQ's `prod_used_codebook`/100)
  perplexity_mean  mean over groups of the per-group perplexities (GSQ's `prod_perplexity`)
Fractions are in [0, 1] (the reference prints percentages).

A dataset-level figure needs counts summed over all batches, not an average of batch figures:
accumulate `code_counts(...)` and call `usage_from_counts` / `perplexity_from_counts` at the end.
`indices` may be grids (B, h, w) / (B, h, w, G) or flat token rows (L*G, the G codes of a position
adjacent, as stored in Parquet), torch tensors or numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

PERPLEXITY_EPS = 1e-10


def code_counts(indices: Any, vocab: int, groups: int = 1) -> torch.Tensor:
    """(groups, vocab) int64 occurrence counts; group g counts every G-th code starting at g."""
    if vocab < 1 or groups < 1:
        raise ValueError(f"vocab and groups must be positive, got {vocab}, {groups}")
    codes = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    codes = codes.detach().to("cpu", torch.int64).reshape(-1)
    if codes.numel() % groups:
        raise ValueError(f"{codes.numel()} codes do not split into groups of {groups}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= vocab):
        raise ValueError(f"codes must lie in [0, {vocab}), got range [{int(codes.min())}, {int(codes.max())}]")
    per_group = codes.reshape(-1, groups) + torch.arange(groups) * vocab
    return torch.bincount(per_group.reshape(-1), minlength=groups * vocab).reshape(groups, vocab)


def usage_from_counts(counts: torch.Tensor) -> dict[str, Any]:
    counts = torch.as_tensor(counts)
    vocab = counts.shape[-1]
    per_group = [float((row > 0).sum()) / vocab for row in counts]
    return {"pooled": float((counts.sum(0) > 0).sum()) / vocab, "per_group": per_group,
            "product": math.prod(per_group)}


def perplexity_from_counts(counts: torch.Tensor) -> dict[str, Any]:
    counts = torch.as_tensor(counts)
    per_group = [_perplexity(row) for row in counts]
    return {"pooled": _perplexity(counts.sum(0)), "per_group": per_group,
            "mean_per_group": sum(per_group) / len(per_group)}


def codebook_usage(indices: Any, vocab: int, groups: int = 1) -> dict[str, Any]:
    """{'pooled', 'per_group', 'product'} usage fractions of one set of codes."""
    return usage_from_counts(code_counts(indices, vocab, groups))


def perplexity(indices: Any, vocab: int, groups: int = 1) -> dict[str, Any]:
    """{'pooled', 'per_group', 'mean_per_group'} perplexities of one set of codes."""
    return perplexity_from_counts(code_counts(indices, vocab, groups))


def _perplexity(counts: torch.Tensor) -> float:
    """Perplexity of one count vector; 0.0 when it holds no codes (undefined, not 1)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts.double() / total
    return float(torch.exp(-(p * torch.log(p + PERPLEXITY_EPS)).sum()))
