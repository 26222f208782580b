"""`scaletok report` on a real tokenize output (the job run on the local Ray, one shard with a
broken image): the page is self-contained and every embedded image decodes; the numbers in it
are the job's. (The same command on an S3 output with a training run is exercised in
tests/infra/test_local_cluster.py.)"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cli import main as scaletok

pytestmark = pytest.mark.slow
TOKENIZER = {"ch": 32, "vocab_size": 256, "z_channels": 32}


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.headings, self._in_h2 = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _bad_shard(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in [("broken.jpg", b"\xff\xd8 not really a jpeg"), ("broken.cls", b"3")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def job_output(ray_cluster, tmp_path_factory):
    from pipeline.runner.config import TokenizeConfig
    from pipeline.runner.job import run_tokenize
    from pipeline.sources.sample_corpus import write_sample_corpus

    root = tmp_path_factory.mktemp("report-job")
    shards = write_sample_corpus(root / "corpus", num_shards=2, samples_per_shard=4, max_side=96)
    _bad_shard(root / "corpus" / "broken-000000.tar")
    (root / "tok.json").write_text(json.dumps(TOKENIZER))
    cfg = TokenizeConfig(input=[*shards, str(root / "corpus" / "broken-000000.tar")], output=str(root / "out"),
                         tokenizer="var-vqvae", tokenizer_config=str(root / "tok.json"), image_size=64,
                         patch_nums=[1, 2, 3, 4], num_actors=1, cpus_per_actor=0.5, batch_size=4, progress=False)
    run_tokenize(cfg)  # non-zero: a sample failed, which is what the report must show
    return root / "out"


@pytest.fixture(scope="module")
def report(job_output):
    assert scaletok(["report", str(job_output), "--reconstructions", "3"]) == 0
    return job_output / "report.html"


def test_report_is_self_contained_and_every_image_decodes(report, job_output):
    page = Page()
    page.feed(report.read_text())
    assert page.links == []  # no stylesheet, script or image fetched from anywhere
    names = [img["data-file"] for img in page.images]
    assert names == ["throughput.png", "codebook.png", "failures.png", "reconstructions.png"]
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        png = base64.b64decode(img["src"][len(prefix):], validate=True)
        with Image.open(io.BytesIO(png)) as decoded:
            decoded.verify()
        assert (job_output / "report" / img["data-file"]).read_bytes() == png  # the PNGs beside the page
    assert "not available" not in report.read_text()


def test_report_grid_has_one_row_per_sample_and_a_column_per_scale(report, job_output):
    with Image.open(job_output / "report" / "reconstructions.png") as grid:
        width, height = grid.size
    cell, pad, head = 96, 4, 16  # pipeline.viz.scale_grid's layout
    assert width == (1 + 4) * (cell + pad) + pad       # input + 4 scales
    assert height == 3 * (cell + pad) + pad + head     # --reconstructions 3


def test_report_numbers_are_the_jobs(job_output, report):
    from pipeline.report import collect

    job = collect.load_job_output(str(job_output))
    assert collect.failures_by_kind(job) == {"decode_error": 1}
    scales = collect.scale_usage(job)
    assert [s.label for s in scales] == ["1: 1x1", "2: 2x2", "3: 3x3", "4: 4x4"]
    assert [s.tokens for s in scales] == [8, 32, 72, 128]  # 8 ok images x h*w
    stats = json.loads((job_output / "_stats.json").read_text())
    assert sum(s.used_codes for s in scales[-1:]) <= stats["codebook"]["used_codes"]
    spans = collect.throughput_spans(job)
    assert sum(len(v) for v in spans.values()) == 3 and all(s.end > s.start for v in spans.values() for s in v)
    page = Page()
    page.feed(report.read_text())
    assert page.headings == ["Job", "Throughput", "Codebook usage per scale", "Failures",
                             "Input vs reconstruction at each scale", "Reconstruction audit"]


def test_report_refuses_a_directory_without_tokenize_output(tmp_path, capsys):
    assert scaletok(["report", str(tmp_path)]) == 2
    assert "holds no tokenize output" in capsys.readouterr().err
