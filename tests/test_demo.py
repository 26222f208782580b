"""`make demo` end to end, scaled down: corpus -> tokenize (local Ray) -> verify -> scales picture ->
a few VAR steps -> samples -> report, with the embedded default tokenizer."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq
from PIL import Image

from jobs.demo import main as demo_main
from pipeline.sinks.reader import read_metadata


def test_demo_runs_end_to_end_on_the_embedded_default(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--num-shards", "1", "--samples-per-shard", "8",
                      "--max-side", "160", "--train-steps", "2"]) == 0

    files = glob.glob(str(out / "tokens" / "tokens" / "*.parquet"))
    assert len(files) == 1
    meta = read_metadata(files[0])
    assert meta["tokenizer"] == "default"
    table = pq.read_table(files[0])
    assert table.num_rows == 8 and set(table["status"].to_pylist()) == {"ok"}

    # the pictures a user looks at exist and are real images
    for name in ("scales.png", "samples.png"):
        with Image.open(out / name) as im:
            assert im.width > 64 and im.height > 64
    assert os.path.getsize(out / "tokens" / "report.html") > 10_000
    assert os.path.exists(out / "runs" / "demo" / "metrics.jsonl")
