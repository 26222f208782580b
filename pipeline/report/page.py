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
    except Exception as e:  # noqa: BLE001 - any failure becomes a visible note
        log.warning("report section %r unavailable: %s", title, e)
        return Section(title, f'<p class="missing">not available: {html.escape(f"{type(e).__name__}: {e}")}</p>')


def summary_section(job: collect.JobOutput) -> Section:
    stats = job.stats or {}
    totals, run = stats.get("totals", {}), stats.get("this_run", {})
    rows = [("output", job.url), ("shards committed", f"{len(job.manifests)} of {stats.get('shards', '?')}"),
            ("samples", totals.get("samples", sum(m.get("samples", 0) for m in job.manifests.values()))),
            ("ok", totals.get("ok", sum(m.get("ok", 0) for m in job.manifests.values()))),
            ("failed", totals.get("failed", sum(m.get("failed", 0) for m in job.manifests.values()))),
            ("missing shards", len(stats.get("missing_shards", []))),
            ("last run", f"{run.get('images', '?')} images in {run.get('wall_s', '?')} s = "
                         f"{run.get('images_per_s', '?')} img/s on {run.get('actors', '?')} actors"
             if run else "no _stats.json")]
    meta = pictures.describe_metadata(job.metadata)
    return Section("Job", _table(rows) + ("<h3>Tokenizer and token format</h3>" + _table(meta) if meta else ""))


def throughput_section(job: collect.JobOutput) -> Section:
    spans = collect.throughput_spans(job)
    png = figures.throughput_figure(spans)
    note = ("<p>Each segment is one shard: from its commit time (the manifest's) back by its duration. "
            "Actors that never committed a shard do not appear.</p>")
    per_actor = [(a, f"{len(s)} shards, {sum(x.images for x in s)} images, "
                     f"{sum(x.images for x in s) / max(sum(x.end - x.start for x in s), 1e-9):.2f} img/s busy")
                 for a, s in sorted(spans.items())]
    return Section("Throughput", note + _img("throughput.png", png, "throughput per actor") + _table(per_actor),
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
    note = "<p>Stored tokens decoded with the tokenizer named in the Parquet metadata, scales 1..k per column.</p>"
    return Section("Input vs reconstruction at each scale",
                   note + _img("reconstructions.png", png, "input and reconstruction per scale"),
                   {"reconstructions.png": png})


def training_section(run_dir: str, sample_images: int, storage_options: dict[str, Any] | None) -> Section:
    from pipeline.var.metrics import plot_curves

    rows = collect.read_training_rows(run_dir, storage_options)
    if not rows:
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    section = Section("Training", _table([("run", run_dir), ("steps", rows[-1]["step"]),
                                          ("last loss", f"{rows[-1]['loss']:.4f}"),
                                          ("last mean accuracy (Accm)", rows[-1].get("Accm"))]))
    curves = plot_curves(rows, title=run_dir)
    if curves:
        section.html += _img("training.png", curves, "loss and accuracy curves")
        section.images["training.png"] = curves
    if sample_images > 0:
        sub = _guarded("samples", lambda: _samples_section(run_dir, sample_images, storage_options))
        section.html += "<h3>Samples</h3>" + sub.html
        section.images.update(sub.images)
    return section


def _samples_section(run_dir: str, count: int, storage_options: dict[str, Any] | None) -> Section:
    per_class = max(1, min(count, 4))
    grid = pictures.training_samples(run_dir, per_class=per_class, classes=max(1, count // per_class),
                                     storage_options=storage_options)
    png = pictures.png_bytes(grid)
    return Section("samples", "<p>One row per class label, newest checkpoint.</p>" + _img("samples.png", png, "samples"),
                   {"samples.png": png})


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
    if run_dir:
        sections.append(_guarded("Training", lambda: training_section(run_dir, sample_images, storage_options)))
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
