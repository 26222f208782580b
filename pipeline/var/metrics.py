"""Training curves: per-step rows (JSONL beside the checkpoints) and a PNG plot of them."""

from __future__ import annotations

import io
import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)


def step_row(step: int, loss: float, ce_per_scale: Sequence[float], acc_per_scale: Sequence[float],
             lr: float, wd: float, grad_norm: float, tokens_per_s: float, seconds: float) -> dict[str, Any]:
    """One metrics row. Lm/Lt/Accm/Acct are the reference's names (mean and last scale)."""
    return {
        "step": step, "loss": loss, "Lt": ce_per_scale[-1], "Acct": acc_per_scale[-1],
        "Accm": sum(acc_per_scale) / len(acc_per_scale),
        "ce_per_scale": [round(x, 5) for x in ce_per_scale],
        "acc_per_scale": [round(x, 3) for x in acc_per_scale],
        "lr": lr, "wd": wd, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "step_s": seconds,
    }


def plot_curves(rows: Sequence[dict[str, Any]], title: str = "") -> bytes | None:
    """PNG bytes with loss, per-scale accuracy, lr and throughput against the step (None without
    matplotlib or rows)."""
    if not rows:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional dependency: the JSONL is the record
        log.warning("matplotlib is not installed; skipping the metrics plot")
        return None
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    ax.plot(steps, [r["loss"] for r in rows], label="loss (mean CE)")
    ax.plot(steps, [r["Lt"] for r in rows], label="last-scale CE", alpha=0.7)
    ax.set_title("loss"); ax.legend(); ax.set_xlabel("step")
    ax = axes[0][1]
    n_scales = len(rows[0]["acc_per_scale"])
    for k in range(n_scales):
        ax.plot(steps, [r["acc_per_scale"][k] for r in rows], label=f"scale {k}", alpha=0.8)
    ax.set_title("top-1 accuracy per scale (%)"); ax.legend(fontsize=6, ncol=2); ax.set_xlabel("step")
    ax = axes[1][0]
    ax.plot(steps, [r["lr"] for r in rows])
    ax.set_title("learning rate"); ax.set_xlabel("step")
    ax = axes[1][1]
    ax.plot(steps, [r["tokens_per_s"] for r in rows])
    ax.set_title("tokens / s (all workers)"); ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
