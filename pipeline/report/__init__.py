"""`scaletok report`: one self-contained HTML page (and PNGs) about a tokenize job and, optionally,
a training run. collect.py reads what the jobs wrote, figures.py draws it, pictures.py decodes
stored tokens back to images, page.py assembles the HTML."""

from pipeline.report.page import build_report

__all__ = ["build_report"]
