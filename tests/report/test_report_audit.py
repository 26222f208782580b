"""The report of a class-folder job with the reconstruction audit on: the audit's distribution per
scale and its worst rows as pictures (input images read back from the class folders)."""

from __future__ import annotations

import json

from PIL import Image

from pipeline.report.page import build_report
from pipeline.runner.job import run_tokenize
from tests.job.conftest import VAR_CONFIG, var_config
from tests.sources.test_inputs import imagenet_tree


def test_audit_in_stats_and_report(ray_cluster, tmp_path):
    var_tokenizer_json = tmp_path / "var.json"
    var_tokenizer_json.write_text(json.dumps(VAR_CONFIG))
    tree = imagenet_tree(tmp_path / "train")
    out = tmp_path / "out"
    assert run_tokenize(var_config([str(tree)], out, var_tokenizer_json, audit_fraction=1.0, images_per_shard=3)) == 0
    audit = json.loads((out / "_stats.json").read_text())["audit"]
    assert audit["rows"] == 5 and audit["scales"] == 4
    assert sum(s["rows"] for s in audit["per_scale"].values()) == 5
    path = build_report(str(out), reconstructions=2)
    page = open(path).read()
    assert "Reconstruction audit" in page and "not available" not in page.split("Reconstruction audit", 1)[1]
    index = json.loads((out / "report" / "index.json").read_text())
    assert sorted(index["Reconstruction audit"]) == ["audit.png", "audit_worst.png"]
    worst = Image.open(out / "report" / "audit_worst.png")
    assert audit["worst"] and worst.height > 100 * len(audit["worst"])  # one row per worst row
    # the reconstruction grid reads its inputs back from the class folders, too
    assert "reconstructions.png" in index["Input vs reconstruction at each scale"]
