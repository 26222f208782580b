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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def actor_work(actor: dict[str, Any]) -> str:
    """What one actor did: the shards it committed and the share of its life it had one in flight."""
    busy = f"{100 * actor['utilisation']:.0f}%"
    if actor["shards"]:
        return f"{plural(actor['shards'], 'shard')}, {plural(actor['images'], 'image')}, busy {busy}"
    # Busy time without a committed shard was spent on attempts that failed (or were stopped).
    return "no shard committed" + (f" (busy {busy} on attempts that failed)" if actor["utilisation"] > 0 else "")


def never_ready_line(count: int, errors: list[str]) -> str:
    if errors:
        return f"{plural(count, 'actor')} never became ready: " + "; ".join(errors)
    # No start-up error: the work ran out (or the job stopped) while the actor was still starting.
    return f"{plural(count, 'actor')} still starting when the job ended (not needed)"


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
        f"{plural(run['actors'], 'actor')}, {plural(run['shard_attempts_failed'], 'failed attempt')}, "
        f"{plural(run['actor_deaths'], 'actor death')}",
    ]
    for actor in run.get("per_actor", []):
        lines.append(f"  actor pid {actor['pid']} on {actor['host']} ({actor['device']}): {actor_work(actor)}"
                     + (f", {actor['batch_probe']}" if actor.get("batch_probe") else ""))
    if run.get("actors_never_ready"):
        lines.append("  " + never_ready_line(run["actors_never_ready"], run.get("actor_startup_errors") or []))
    cb = stats.get("codebook")
    if cb:
        lines.append(f"codebook: {cb['used_codes']}/{cb['vocab_size']} codes used "
                     f"({100 * cb['usage']:.1f}%), perplexity {cb['perplexity']:.1f}")
    audit = stats.get("audit")
    if audit:
        final = audit["per_scale"].get(str(audit["scales"]))
        lines.append(f"reconstruction audit: {plural(audit['rows'], 'row')} decoded"
                     + (f"; after all {audit['scales']} scales PSNR {final['psnr_mean']:.2f} dB (p10 "
                        f"{final['psnr_p10']:.2f}), SSIM {final['ssim_mean']:.3f}" if final else ""))
    for name in run.get("shards_committed_by_other_bytes") or []:
        lines.append(f"  {name}: another attempt had committed other bytes first (non-reproducible encoding); "
                     f"its version stands")
    if run.get("shards_repaired"):
        lines.append(f"  {plural(run['shards_repaired'], 'shard')} committed earlier published now")
    if run.get("shards_redone"):
        lines.append(f"  {plural(len(run['shards_redone']), 'shard')} whose data file was missing or damaged "
                     f"encoded again, byte-identical to the committed version: {', '.join(run['shards_redone'][:5])}")
    for name, error in stats["failed_shards"].items():
        lines.append(f"FAILED shard {name}: {error}")
    return "\n".join(lines)
