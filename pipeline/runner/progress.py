"""Driver-side progress: a tqdm bar (shards done/total, images/s, failures, ETA) fed by a tiny
counter actor that every tokenizer actor bumps after each batch, and the final summary text."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


class ImageCounter:
    """Ray actor (num_cpus=0): images tokenized so far, across all actors and attempts."""

    def __init__(self) -> None:
        self.images = 0

    def add(self, n: int) -> None:
        self.images += int(n)

    def total(self) -> int:
        return self.images


class ProgressBar:
    def __init__(self, total_shards: int, enabled: bool = True) -> None:
        self.start = time.perf_counter()
        self.images = 0
        self.failed = 0
        self.bar = tqdm(total=total_shards, unit="shard", desc="tokenize", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def update(self, shards_done: int = 0, images: int | None = None, failed: int | None = None) -> None:
        if images is not None:
            self.images = images
        if failed is not None:
            self.failed = failed
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix({"img/s": f"{self.images / elapsed:.1f}", "images": self.images,
                              "failed": self.failed}, refresh=False)
        self.bar.update(shards_done)

    def close(self) -> None:
        self.bar.close()


def format_summary(stats: dict[str, Any]) -> str:
    run = stats["this_run"]
    totals = stats["totals"]
    lines = [
        f"shards: {totals['shards_committed']}/{stats['shards']} committed "
        f"({run['shards_committed']} this run, {run['shards_skipped']} already done), "
        f"{len(stats['failed_shards'])} failed",
        f"samples: {totals['samples']} ({totals['ok']} ok, {totals['failed']} failed"
        + (": " + ", ".join(f"{k} {v}" for k, v in totals["status_counts"].items() if k != "ok")
           if totals["failed"] else "") + ")",
        f"this run: {run['images']} images in {run['wall_s']:.1f} s = {run['images_per_s']:.2f} img/s, "
        f"{run['actors']} actors, {run['shard_attempts_failed']} failed attempts, "
        f"{run['actor_deaths']} actor deaths",
    ]
    for actor in run.get("per_actor", []):
        lines.append(f"  actor pid {actor['pid']} on {actor['host']} ({actor['device']}): {actor['shards']} shards, "
                     f"{actor['images']} images, busy {100 * actor['utilisation']:.0f}%"
                     + (f", {actor['batch_probe']}" if actor.get("batch_probe") else ""))
    if run.get("actors_never_ready"):
        lines.append(f"  {run['actors_never_ready']} actors never became ready "
                     + "; ".join(run.get("actor_startup_errors") or []))
    cb = stats.get("codebook")
    if cb:
        lines.append(f"codebook: {cb['used_codes']}/{cb['vocab_size']} codes used "
                     f"({100 * cb['usage']:.1f}%), perplexity {cb['perplexity']:.1f}")
    for name, error in stats["failed_shards"].items():
        lines.append(f"FAILED shard {name}: {error}")
    return "\n".join(lines)
