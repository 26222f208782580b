"""Codebook usage of a shard (or a whole job): counts compact enough for a manifest, used codes,
perplexity. Merged across shards by adding the counts."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np


def histogram_summary(hist: np.ndarray | None) -> dict[str, Any] | None:
    """Codebook usage of one shard: counts (compact, for merging), used codes, perplexity.
    None without a codebook (continuous tokenizers: an empty histogram)."""
    if hist is None:
        return None
    hist = np.asarray(hist, dtype=np.int64)
    if hist.size == 0:
        return None
    total = int(hist.sum())
    return {
        "vocab_size": int(hist.size),
        "tokens": total,
        "used_codes": int((hist > 0).sum()),
        "perplexity": perplexity(hist),
        "counts_b64_u32le": base64.b64encode(hist.astype("<u4").tobytes()).decode(),
    }


def histogram_from_summary(summary: dict[str, Any] | None) -> np.ndarray | None:
    if not summary or "counts_b64_u32le" not in summary:
        return None
    return np.frombuffer(base64.b64decode(summary["counts_b64_u32le"]), dtype="<u4").astype(np.int64)


def perplexity(hist: np.ndarray) -> float:
    total = float(hist.sum())
    if total <= 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(math.exp(-float((p * np.log(p)).sum())))
