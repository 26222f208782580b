"""The reconstruction audit (`--audit-fraction F`, default 0.01): does the tokenizer fit this
corpus? Right after a batch is encoded, a seeded sample of its ok rows is decoded from the very
tokens that are stored, and compared with the image the encoder saw: PSNR and SSIM.

Each audited row is decoded at one scale (the first k scales, k drawn from the same seed), so the
audit costs one decoder pass per audited image whatever the number of scales, and the sample
still covers every scale: at 1 % of ImageNet that is ~1 300 images per scale of VAR's ten. The
sample is chosen per row from (seed, shard, key): the same rows whatever the number of actors.
Results go to the shard's manifest (`audit`), `_stats.json` (`audit`: distribution per scale,
worst rows) and the report.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.runner.config import JobSpec
from pipeline.sinks.reader import row_tokens
from pipeline.sinks.schema import ORIGINAL_VARIANT, TokenRow, build_table, token_schema
from pipeline.tokenizer_training.losses import psnr, ssim
from pipeline.tokenizers.base import Tokenizer

WORST_KEPT = 8   # rows named in _stats.json (and shown in the report) per job


def seeded_u64(*parts: object) -> int:
    """A 64-bit draw that depends only on `parts` (seed, shard, key, ...): rows are sampled the
    same whatever the actors, their number or the order shards are read in."""
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "big")


def audited_scale(seed: int, shard: str, key: str, fraction: float, num_scales: int) -> int | None:
    """The number of scales (1..num_scales) to decode this row at, or None when it is not audited."""
    draw = seeded_u64("recon", seed, shard, key)
    if fraction <= 0 or draw >= fraction * 2 ** 64:
        return None
    return 1 + (draw // 7919) % max(1, num_scales)


def audit_batch(tok: Tokenizer, spec: JobSpec, items: Sequence[tuple[Any, torch.Tensor | None]],
                rows: Sequence[TokenRow], shard: str) -> list[dict[str, Any]]:
    """PSNR/SSIM of the sampled ok original rows of one encoded batch (`rows` are its rows)."""
    if spec.audit_fraction <= 0:
        return []
    inputs = {sample.key: x for sample, x in items if x is not None}
    schema = token_schema(spec.vocab_size, with_variant=bool(spec.variants), metadata=spec.metadata)
    records = []
    for row in rows:
        if row.status != "ok" or row.variant != ORIGINAL_VARIANT or row.key not in inputs:
            continue
        scales = len(row.scale_shapes) // 2
        upto = audited_scale(spec.seed, shard, row.key, spec.audit_fraction, scales)
        if upto is None:
            continue
        tokens = row_tokens(build_table([row], schema), 0)  # exactly what the data file holds
        try:
            recon = tok.decode(tokens, upto=upto).float().cpu()
        except NotImplementedError:
            return []  # an encoder-only tokenizer: nothing to audit
        target = inputs[row.key].float().cpu()
        h, w = min(recon.shape[-2], target.shape[-2]), min(recon.shape[-1], target.shape[-1])
        lo, hi = tok.input_range
        recon, target = recon[..., :h, :w].clamp(lo, hi), target[..., :h, :w]
        records.append({"key": row.key, "scale": upto, "of": scales,
                        "psnr": round(float(psnr(recon, target, tok.input_range)[0]), 3),
                        "ssim": round(float(ssim(recon, target, tok.input_range, reduce=False)[0]), 4)})
    return records


class AuditFold:
    """The job's audit summary folded shard by shard (manifests are streamed: at a million shards
    the records must not all be held): per scale up to MAX_VALUES PSNR/SSIM values for the
    distribution, and the worst rows after all scales."""

    MAX_VALUES = 50_000

    def __init__(self) -> None:
        self.rows = 0
        self.scales = 0
        self.values: dict[int, list[tuple[float, float]]] = {}
        self.worst: list[tuple[float, int, dict[str, Any]]] = []   # a max-heap by -psnr, WORST_KEPT long

    def add(self, shard: str, records: Sequence[dict[str, Any]] | None) -> None:
        for r in records or ():
            self.rows += 1
            self.scales = max(self.scales, int(r["of"]))
            kept = self.values.setdefault(int(r["scale"]), [])
            if len(kept) < self.MAX_VALUES:
                kept.append((float(r["psnr"]), float(r["ssim"])))
            if r["scale"] == r["of"]:
                item = (-float(r["psnr"]), self.rows, dict(r, shard=shard))
                if len(self.worst) < WORST_KEPT:
                    heapq.heappush(self.worst, item)
                else:
                    heapq.heappushpop(self.worst, item)

    def result(self) -> dict[str, Any] | None:
        if not self.rows:
            return None
        per_scale = {}
        for scale in sorted(self.values):
            values = np.array([v for v, _ in self.values[scale]])
            ssims = np.array([v for _, v in self.values[scale]])
            per_scale[str(scale)] = {"rows": int(values.size), "psnr_mean": round(float(values.mean()), 3),
                                     "psnr_p10": round(float(np.percentile(values, 10)), 3),
                                     "psnr_p50": round(float(np.percentile(values, 50)), 3),
                                     "psnr_p90": round(float(np.percentile(values, 90)), 3),
                                     "ssim_mean": round(float(ssims.mean()), 4)}
        worst = [r for _, _, r in sorted(self.worst, key=lambda item: -item[0])]
        return {"rows": self.rows, "scales": self.scales, "per_scale": per_scale, "worst": worst}


def summarize(audits: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """shard -> its audit records  ->  the job's distribution per scale and its worst rows."""
    fold = AuditFold()
    for shard, records in audits.items():
        fold.add(shard, records)
    return fold.result()
