"""Training curves from metrics rows (what a job appends to metrics.jsonl) as one PNG.

`panels` maps a panel title to the row keys drawn in it against `step`; rows lacking a key are
skipped for that line, so train and evaluation rows can share one log.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)


def plot_panels(rows: Sequence[dict[str, Any]], panels: dict[str, Sequence[str]], title: str = "",
                columns: int = 2) -> bytes | None:
    """PNG bytes, or None without rows or without matplotlib (the JSONL stays the record)."""
    rows = [r for r in rows if "step" in r]
    if not rows or not panels:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("matplotlib is not installed; skipping the metrics plot")
        return None
    n = len(panels)
    nrows = -(-n // columns)
    fig, axes = plt.subplots(nrows, columns, figsize=(5 * columns, 3.2 * nrows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=key, marker="." if len(pts) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no "1.25"
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
