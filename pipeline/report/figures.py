"""The report's charts as PNG bytes. Figures are built with matplotlib's object API, never pyplot,
so making a report leaves the caller's backend (a notebook's inline one) alone."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from pipeline.report.collect import ScaleUsage, ShardSpan


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def throughput_figure(spans: dict[str, list[ShardSpan]], run_s: float | None = None) -> bytes:
    """Top: images/s of each actor over time (one segment per shard). Bottom: images committed.
    With `run_s` (the run's wall time) the axis covers the whole run, and the time before the
    first shard started (Ray, actors, tokenizer loading) is shaded."""
    fig = Figure(figsize=(9, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    if not spans:
        top.text(0.5, 0.5, "no shard timings recorded", ha="center", va="center", transform=top.transAxes)
    for actor, items in sorted(spans.items()):
        line = None
        for s in items:
            line = top.plot([s.start, s.end], [s.images_per_s] * 2, lw=3,
                            color=line[0].get_color() if line else None, label=None if line else actor)
    if spans:
        # Upper left: over the start-up, where no shard is drawn, when the axis covers the run.
        top.legend(fontsize=7, loc="upper left" if run_s else "best")
        top.set_ylim(0, 1.2 * max(s.images_per_s for items in spans.values() for s in items))
        ends = sorted((s.end, s.images) for items in spans.values() for s in items)
        bottom.step([0] + [e for e, _ in ends], np.cumsum([0] + [n for _, n in ends]), where="post")
    if run_s:
        first = min((s.start for items in spans.values() for s in items), default=run_s)
        for ax in (top, bottom):
            ax.axvspan(0, max(first, 0), color="0.9", zorder=0)
            ax.set_xlim(0, run_s)
        top.text(max(first, 0) / 2, 0.5, "start-up: Ray, actors, tokenizer", transform=top.get_xaxis_transform(),
                 ha="center", va="center", rotation=90 if first < 0.3 * run_s else 0, color="0.35", fontsize=9)
    top.set_ylabel("images / s (per shard)")
    top.set_title("throughput per actor")
    bottom.set_ylabel("images committed")
    bottom.set_xlabel("seconds since the run started" if run_s else "seconds since the first shard started")
    return _png(fig)


def codebook_figure(scales: Sequence[ScaleUsage]) -> bytes:
    """Per scale: share of the codebook used and perplexity; then the code-frequency histogram."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    if scales:
        x = np.arange(len(scales))
        left.bar(x, [100 * s.usage for s in scales], color="tab:blue")
        left.set_xticks(x, [s.label for s in scales], rotation=45, ha="right", fontsize=7)
        left.set_ylabel("codes used (% of vocabulary)", color="tab:blue")
        twin = left.twinx()
        twin.plot(x, [s.perplexity for s in scales], "o-", color="tab:red")
        twin.set_ylabel("perplexity", color="tab:red")
        left.set_title("codebook usage per scale")
        total = np.sum([np.pad(s.counts, (0, max(c.counts.size for c in scales) - s.counts.size)) for s in scales],
                       axis=0)
        ordered = np.sort(total)[::-1]
        right.bar(np.arange(ordered.size), ordered, width=1.0, color="tab:gray")
        right.set_yscale("symlog")
        right.set_xlabel("codes, most used first")
        right.set_ylabel("occurrences (all scales)")
        right.set_title(f"code frequency: {int((total > 0).sum())}/{total.size} codes used")
    else:
        left.text(0.5, 0.5, "no ok rows", ha="center", va="center", transform=left.transAxes)
    return _png(fig)


def failures_figure(counts: dict[str, int]) -> bytes:
    fig = Figure(figsize=(7, max(2.0, 0.45 * len(counts) + 1)))
    ax = fig.subplots()
    if counts:
        kinds = list(counts)[::-1]
        ax.barh(kinds, [counts[k] for k in kinds], color="tab:red")
        for i, k in enumerate(kinds):
            ax.text(counts[k], i, f" {counts[k]}", va="center", fontsize=8)
        ax.set_xlabel("samples (shards for whole-shard failures)")
    else:
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", transform=ax.transAxes, fontsize=14)
        ax.set_axis_off()
    ax.set_title("failures by kind")
    return _png(fig)


def audit_figure(psnr_by_scale: dict[int, list[float]]) -> bytes:
    """The reconstruction audit: PSNR of the audited rows per number of scales decoded (box plot)."""
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    scales = sorted(psnr_by_scale)
    ax.boxplot([psnr_by_scale[k] for k in scales], positions=scales, widths=0.6)
    ax.set_xlabel("scales decoded (1 = the first scale only)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("reconstruction audit: PSNR of the sampled rows")
    return _png(fig)
