"""Assemble the report: OUT/report.html (every image inline as base64 PNG, so the file can be
mailed or opened from object storage) and the same images as PNGs under OUT/report/."""

from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.report import collect, figures, pictures
from pipeline.sinks.integrity import DamagedDataError

log = logging.getLogger(__name__)

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
img{max-width:100%;border:1px solid #eee}.missing{color:#a33}.num{text-align:right}"""


@dataclass
class Section:
    title: str
    html: str = ""
    images: dict[str, bytes] = field(default_factory=dict)   # file name -> PNG bytes


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" data-file="{name}"></p>'


def _guarded(title: str, make: Callable[[], Section]) -> Section:
    """A section that cannot be made says why instead of failing the whole report."""
    try:
        return make()
    except DamagedDataError:
        raise  # a damaged data file fails the report (exit 1), it is not a missing picture
    except Exception as e:  # noqa: BLE001 - any failure becomes a visible note
        log.warning("report section %r unavailable: %s", title, e)
        return Section(title, f'<p class="missing">not available: {html.escape(f"{type(e).__name__}: {e}")}</p>')


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{s:.2f} s"


def rate(images: float, s: float) -> str:
    return f"{images / s:.2f} images/s" if s > 0 else "n/a"


def run_line(run: dict[str, Any]) -> str:
    """One run's figures, rounded, with units: images, wall time, overall rate, actors."""
    if not run:
        return "no _stats.json"
    images, wall = int(run.get("images") or 0), float(run.get("wall_s") or 0.0)
    text = (f"{plural(images, 'image')} in {seconds(wall)} = {rate(images, wall)} overall, "
            f"on {plural(int(run.get('actors') or 0), 'actor')}")
    return text + (f" (finished {run['finished_at']})" if run.get("finished_at") else "")


def summary_section(job: collect.JobOutput) -> Section:
    stats = job.stats or {}
    totals, shown, latest = stats.get("totals", {}), collect.shown_run(stats), stats.get("this_run") or {}
    rows = [("output", job.url), ("shards committed", f"{len(job.manifests)} of {stats.get('shards', '?')}"),
            ("samples", totals.get("samples", sum(m.get("samples", 0) for m in job.manifests.values()))),
            ("ok", totals.get("ok", sum(m.get("ok", 0) for m in job.manifests.values()))),
            ("failed", totals.get("failed", sum(m.get("failed", 0) for m in job.manifests.values()))),
            ("missing shards", len(stats.get("missing_shards", []))),
            ("last run that did work", run_line(shown))]
    if latest and latest is not shown and latest != shown:
        rows.append(("latest run", latest.get("note") or run_line(latest)))
    meta = pictures.describe_metadata(job.metadata)
    return Section("Job", _table(rows) + ("<h3>Tokenizer and token format</h3>" + _table(meta) if meta else ""))


THROUGHPUT_NOTE = (
    "<p>Each segment is one shard, drawn from its commit time (the manifest's) back by its duration; "
    "the axis is the whole run, and the shaded start is the time before the first shard started "
    "(starting Ray and the actors, loading the tokenizer). Actors that never committed a shard do "
    "not appear.</p><p>Two rates: <b>overall</b> is the run's images divided by its wall time, "
    "start-up and idle tail included; <b>while busy</b> is an actor's images divided by the time it "
    "had at least one shard in flight. The gap between them is the run's fixed cost and idle time: "
    "on a short run it dominates; on a long one the overall rate approaches the sum of the actors' "
    "rates while busy.</p>")


def throughput_section(job: collect.JobOutput) -> Section:
    window = collect.run_window(job)
    run = collect.shown_run(job.stats)
    spans = collect.throughput_spans(job, origin=window[0] if window else None)
    png = figures.throughput_figure(spans, run_s=window[1] - window[0] if window else None)
    rows = [("whole run", run_line(run))] if run else []
    for actor, items in sorted(spans.items()):
        images, busy = sum(x.images for x in items), collect.busy_seconds(items)
        rows.append((actor, f"{plural(len(items), 'shard')}, {plural(images, 'image')}, busy {seconds(busy)} = "
                            f"{rate(images, busy)} while busy"))
    earlier = len(job.manifests) - sum(len(items) for items in spans.values())
    if window and earlier > 0:
        rows.append(("not shown", f"{plural(earlier, 'shard')} committed by earlier runs"))
    return Section("Throughput", THROUGHPUT_NOTE + _img("throughput.png", png, "throughput per actor") + _table(rows),
                   {"throughput.png": png})


def codebook_section(job: collect.JobOutput) -> Section:
    if job.metadata.get("continuous"):
        return Section("Codebook usage per scale", f"<p>{html.escape(str(job.metadata.get('tokenizer')))} stores "
                       "continuous latents: there is no codebook.</p>")
    scales = collect.scale_usage(job)
    png = figures.codebook_figure(scales)
    rows = [(s.label, f"{s.used_codes}/{s.vocab_size} codes ({100 * s.usage:.1f}%), perplexity {s.perplexity:.1f}, "
                      f"{s.tokens} tokens") for s in scales]
    return Section("Codebook usage per scale", _img("codebook.png", png, "codebook usage per scale") + _table(rows),
                   {"codebook.png": png})


def failures_section(job: collect.JobOutput) -> Section:
    counts = collect.failures_by_kind(job)
    png = figures.failures_figure(counts)
    failed = (job.stats or {}).get("failed_shards") or {}
    details = _table([(k, v) for k, v in failed.items()]) if failed else ""
    return Section("Failures", _img("failures.png", png, "failures by kind") + details, {"failures.png": png})


def reconstruction_section(job: collect.JobOutput, count: int, checkpoint: str | None,
                           storage_options: dict[str, Any] | None) -> Section:
    grid = pictures.reconstruction_grid(job, count, checkpoint, storage_options)
    png = pictures.png_bytes(grid)
    note = ("<p>Stored tokens decoded with the tokenizer named in the Parquet metadata: the input (after the "
            "image policy), then column k decoded from scales 1 to k (header: k and the grid of scale k).</p>")
    return Section("Input vs reconstruction at each scale",
                   note + _img("reconstructions.png", png, "input and reconstruction per scale"),
                   {"reconstructions.png": png})


AUDIT_NOTE = ("<p>Right after encoding, a seeded sample of the ok rows (<code>--audit-fraction</code>) was decoded "
              "from its stored tokens, each row at one number of scales, and compared with the image the encoder "
              "saw. Low PSNR after all scales means the tokenizer does not fit these images.</p>")


def audit_section(job: collect.JobOutput, checkpoint: str | None, storage_options: dict[str, Any] | None) -> Section:
    records = [r for m in job.manifests.values() for r in (m.get("audit") or [])]
    if not records:
        return Section("Reconstruction audit", "<p>No rows were audited (--audit-fraction 0, or a tokenizer "
                                               "without a decoder).</p>")
    summary = (job.stats or {}).get("audit") or {}
    by_scale: dict[int, list[float]] = {}
    for r in records:
        by_scale.setdefault(int(r["scale"]), []).append(float(r["psnr"]))
    png = figures.audit_figure(by_scale)
    rows = [(f"{k} of {records[0]['of']} scales", f"{len(v)} rows, PSNR mean {sum(v) / len(v):.2f} dB, "
             f"min {min(v):.2f} dB, SSIM mean "
             f"{sum(r['ssim'] for r in records if int(r['scale']) == k) / len(v):.3f}")
            for k, v in sorted(by_scale.items())]
    section = Section("Reconstruction audit", AUDIT_NOTE + _img("audit.png", png, "PSNR per scale") + _table(rows),
                      {"audit.png": png})
    worst = summary.get("worst") or []
    if worst:
        sub = _guarded("worst reconstructions", lambda: Section("worst", "", {"audit_worst.png": pictures.png_bytes(
            pictures.worst_reconstructions(job, worst, checkpoint, storage_options))}))
        if "audit_worst.png" in sub.images:
            section.html += ("<h3>Worst rows after all scales</h3>"
                             + _img("audit_worst.png", sub.images["audit_worst.png"], "worst reconstructions"))
            section.images.update(sub.images)
        else:
            section.html += sub.html
    return section


def training_section(run_dir: str, sample_images: int, storage_options: dict[str, Any] | None,
                     class_names: list[str] | None = None) -> Section:
    from pipeline.var.metrics import plot_curves

    rows = collect.read_training_rows(run_dir, storage_options)
    if not rows:
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    last = rows[-1]
    accuracy = f"{last['Accm']:.2f} %" if isinstance(last.get("Accm"), (int, float)) else "n/a"
    section = Section("Training", _table([("run", run_dir), ("steps", last["step"]),
                                          ("last loss (cross-entropy, nats)", f"{last['loss']:.4f}"),
                                          ("last top-1 accuracy, mean over scales (Accm)", accuracy)]))
    curves = plot_curves(rows, title=run_dir)
    if curves:
        section.html += _img("training.png", curves, "loss and accuracy curves")
        section.images["training.png"] = curves
    if sample_images > 0:
        sub = _guarded("samples", lambda: _samples_section(run_dir, sample_images, storage_options, class_names))
        section.html += "<h3>Samples</h3>" + sub.html
        section.images.update(sub.images)
    return section


def _samples_section(run_dir: str, count: int, storage_options: dict[str, Any] | None,
                     class_names: list[str] | None) -> Section:
    per_class = max(1, min(count, 4))
    grid, labels = pictures.training_samples(run_dir, per_class=per_class, classes=max(1, count // per_class),
                                             storage_options=storage_options, class_names=class_names)
    png = pictures.png_bytes(grid)
    note = (f"<p>From the newest checkpoint, {plural(per_class, 'sample')} per row, one row per class: "
            f"{html.escape(', '.join(labels))}.</p>")
    return Section("samples", note + _img("samples.png", png, "samples, one row per class"), {"samples.png": png})


def render(title: str, sections: list[Section]) -> str:
    body = "".join(f"<h2>{html.escape(s.title)}</h2>{s.html}" for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def build_report(out: str, run_dir: str | None = None, reconstructions: int = 4, checkpoint: str | None = None,
                 sample_images: int = 8, storage_options: dict[str, Any] | None = None) -> str:
    """Write OUT/report.html and OUT/report/*.png; return the HTML's path."""
    job = collect.load_job_output(out, storage_options)
    sections = [summary_section(job),
                _guarded("Throughput", lambda: throughput_section(job)),
                _guarded("Codebook usage per scale", lambda: codebook_section(job)),
                _guarded("Failures", lambda: failures_section(job))]
    if reconstructions > 0:
        sections.append(_guarded("Input vs reconstruction at each scale",
                                 lambda: reconstruction_section(job, reconstructions, checkpoint, storage_options)))
    sections.append(_guarded("Reconstruction audit", lambda: audit_section(job, checkpoint, storage_options)))
    if run_dir:
        names = job.metadata.get("class_names")
        sections.append(_guarded("Training", lambda: training_section(run_dir, sample_images, storage_options, names)))
    layout = job.layout
    layout.makedirs()
    if layout.is_local:
        import os

        os.makedirs(layout.join("report"), exist_ok=True)
    for section in sections:
        for name, png in section.images.items():
            layout.put(layout.join("report", name), png)
    path = layout.join("report.html")
    layout.put(path, render(f"scaletok report: {out}", sections).encode())
    layout.put(layout.join("report", "index.json"),
               json.dumps({s.title: sorted(s.images) for s in sections}, indent=1).encode())
    return path if "://" not in out else out.rstrip("/") + "/report.html"
