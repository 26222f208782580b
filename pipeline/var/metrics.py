"""Training curves: per-step rows (JSONL beside the checkpoints) and a PNG plot of them."""

from __future__ import annotations

from typing import Any, Sequence

from pipeline.training.curves import plot_panels


def step_row(step: int, loss: float, ce_per_scale: Sequence[float], acc_per_scale: Sequence[float],
             lr: float, wd: float, grad_norm: float, tokens_per_s: float, seconds: float,
             data_wait_s: float = 0.0, wall_time: float | None = None) -> dict[str, Any]:
    """One metrics row. Lm/Lt/Accm/Acct are the reference's names (mean and last scale).

    Wall figures: `step_s` is the wall time per step since the previous row (data waits, logging
    and checkpoints included), `tokens_per_s` the tokens of those steps over that wall time,
    `data_wait_s` the part of `step_s` spent waiting for the batch, `time` the Unix time of the row."""
    return {
        "step": step, "loss": loss, "Lt": ce_per_scale[-1], "Acct": acc_per_scale[-1],
        "Accm": sum(acc_per_scale) / len(acc_per_scale),
        "ce_per_scale": [round(x, 5) for x in ce_per_scale],
        "acc_per_scale": [round(x, 3) for x in acc_per_scale],
        "lr": lr, "wd": wd, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "step_s": seconds,
        "data_wait_s": data_wait_s, "time": wall_time,
    }


def plot_curves(rows: Sequence[dict[str, Any]], title: str = "") -> bytes | None:
    """PNG bytes with loss, per-scale accuracy, lr and throughput against the step (None without
    matplotlib or rows)."""
    rows = [r for r in rows if "step" in r]
    if not rows:
        return None
    n_scales = max(len(r.get("acc_per_scale") or ()) for r in rows)
    # the per-scale list becomes one key per scale so the shared plotter draws one line each
    # scales numbered from 1, as everywhere else in the report
    flat = [{**r, **{f"scale {k}": a for k, a in enumerate(r.get("acc_per_scale") or (), start=1)}} for r in rows]
    panels = {"loss": ("loss", "Lt"), "top-1 accuracy per scale (%)": tuple(f"scale {k}" for k in range(1, n_scales + 1)),
              "learning rate": ("lr",), "tokens / s (all workers)": ("tokens_per_s",)}
    return plot_panels(flat, panels, title=title)
