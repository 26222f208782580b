"""`report.html` as a reader sees it: rendered by real headless Chromium (Debian's `chromium`
package; `make test` installs it where apt can), driven over the DevTools protocol. Every image
must have loaded, the console must stay clean, and the page must say what the issue asked:
rounded numbers with units, one scale numbering, both fingerprints by name, class labels on the
sample rows, the two throughput rates explained, a throughput chart covering the whole run.

The screenshot is kept as OUT/report/screenshot.png of the test's output (the path is printed)."""

from __future__ import annotations

import re

import pytest

from pipeline.report import build_report, collect
from tests.report.browser import Chromium, find_chromium

pytestmark = pytest.mark.slow
CHROMIUM = find_chromium()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium found (/usr/bin/chromium): `apt-get install chromium`, or run `make test`, "
                    "which installs it where apt is available")
    pytest.importorskip("websocket", reason="websocket-client (the test extras) talks to Chromium")
    with Chromium(CHROMIUM) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def report(fresh_ray, tmp_path_factory):  # fresh_ray: tests/conftest.py
    from pipeline.runner.config import TokenizeConfig
    from pipeline.runner.job import run_tokenize
    from pipeline.sources.sample_corpus import write_sample_corpus
    from pipeline.var.train import fit
    from pipeline.var.train_config import TrainConfig

    root = tmp_path_factory.mktemp("browser-report")
    shards = write_sample_corpus(root / "corpus", num_shards=2, samples_per_shard=4, max_side=96)
    out = root / "out"
    cfg = TokenizeConfig(input=shards, output=str(out), tokenizer="default", num_actors=1, cpus_per_actor=0.5,
                         batch_size=4, progress=False)
    assert run_tokenize(cfg) == 0
    run = fit(TrainConfig(tokens=str(out), depth=2, var_config={"embed_dim": 32, "num_heads": 2}, batch_size=4,
                          max_steps=2, num_workers=1, cpus_per_worker=0.5, storage_path=str(root / "runs"),
                          name="r", ckpt_every=2, log_every=1))
    path = build_report(str(out), run_dir=run.run_dir, reconstructions=3, sample_images=4)
    return out, path


@pytest.fixture(scope="module")
def page(browser, report):
    out, path = report
    view = browser.view(f"file://{path}")
    shot = out / "report" / "screenshot.png"
    shot.write_bytes(view.screenshot)
    print(f"report screenshot: {shot}")
    return view


def test_every_image_loads_and_the_console_stays_clean(page):
    assert [i["alt"] for i in page.images] == [
        "throughput per actor", "codebook usage per scale", "failures by kind",
        "input and reconstruction per scale", "loss and accuracy curves", "samples, one row per class"]
    for image in page.images:
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
    assert page.errors == []
    assert "not available" not in page.text
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 10_000


def test_numbers_are_rounded_and_carry_units(page):
    assert re.findall(r"\d+\.\d{5,}", page.text) == []  # no 6.456225152526583
    assert re.search(r"last top-1 accuracy, mean over scales \(Accm\)\s+\d+\.\d\d %", page.text)
    assert re.search(r"\d+ images in \d+\.\d s = \d+\.\d\d images/s overall, on 1 actor\b", page.text)


def test_the_page_names_both_fingerprints_and_numbers_scales_from_1(page):
    assert re.search(r"tokenizer fingerprint\s+[0-9a-f]{32}", page.text)
    assert re.search(r"job fingerprint\s+[0-9a-f]{32}", page.text)
    assert re.search(r"grid of each stored scale\s+1: 1x1, 2: 2x2", page.text)
    assert re.search(r"^1: 1x1\s", page.text, re.M) and not re.search(r"^0: ", page.text, re.M)


def test_sample_rows_are_labelled_and_the_two_rates_explained(page):
    assert "one row per class: class 0" in page.text
    assert "overall is the run's images divided by its wall time" in page.text
    assert re.search(r"busy \d+\.\d+ s = \d+\.\d\d images/s while busy", page.text)


def test_the_throughput_chart_covers_the_whole_run(report):
    out, _ = report
    job = collect.load_job_output(str(out))
    start, end = collect.run_window(job)
    wall = collect.shown_run(job.stats)["wall_s"]
    assert end - start == pytest.approx(wall)
    spans = collect.throughput_spans(job, origin=start)
    assert sum(len(v) for v in spans.values()) == 2
    # Every shard lies inside the run, and start-up (before the first shard) is part of the axis.
    assert all(0 <= s.start < s.end <= wall + 1e-6 for v in spans.values() for s in v)
    assert min(s.start for v in spans.values() for s in v) > 0
