"""The job on the corpus layouts users have: an ImageNet-layout class-folder tree (local and on the
tests' S3 server) and Parquet written by Hugging Face `datasets`; keys, labels and class names
end to end, reruns that do no work, verify, and the reconstruction audit in stats and manifests."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.runner.job import run_tokenize
from pipeline.sinks.schema import decode_metadata
from pipeline.runner.verify import verify_output
from tests.job.conftest import tiny_config
from tests.sources.test_inputs import hf_dataset_parquet, imagenet_tree

BUCKET = "scaletok-layouts"


def rows_of(out) -> dict[str, dict]:
    rows = {}
    for path in sorted((out / "tokens").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows[row["key"]] = row
    return rows


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return imagenet_tree(tmp_path_factory.mktemp("imagenet") / "train")


def test_class_folder_tree(ray_cluster, tree, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = tiny_config([str(tree)], out, num_actors=1, images_per_shard=2, audit_fraction=1.0)
    assert run_tokenize(cfg) == 0
    assert "2 non-image files ignored" in capsys.readouterr().out
    rows = rows_of(out)
    assert {k: (r["label"], r["status"]) for k, r in rows.items()} == {
        "n01440764/n01440764_10026": (1, "ok"), "n01440764/n01440764_2": (1, "ok"),
        "n01443537/extra/deep": (2, "ok"), "n01443537/n01443537_7": (2, "ok"), "n02102040/n02102040_1": (3, "ok")}
    classes = ["n00000000_empty", "n01440764", "n01443537", "n02102040"]
    assert json.loads((out / "classes.json").read_text())["classes"] == classes
    first = sorted((out / "tokens").glob("*.parquet"))[0]
    assert decode_metadata(pq.read_schema(first))["class_names"] == classes
    # the reconstruction audit: every ok row decoded at one scale, in the manifests and the stats
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["audit"]["rows"] == 5 and all(0 < s["psnr_mean"] < 100 for s in stats["audit"]["per_scale"].values())
    manifest = json.loads(next((out / "_manifest").glob("*.json")).read_text())
    assert manifest["audit"] and {"key", "scale", "psnr", "ssim"} <= set(manifest["audit"][0])
    assert verify_output(str(out), [str(tree)]).clean
    before = {p.name: p.stat().st_mtime_ns for p in (out / "tokens").glob("*.parquet")}
    assert run_tokenize(tiny_config([str(tree)], out, num_actors=1, images_per_shard=2)) == 0
    assert json.loads((out / "_stats.json").read_text())["this_run"]["shards_committed"] == 0  # no work
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "tokens").glob("*.parquet")}


def test_class_folder_tree_on_s3_gives_the_same_tokens(ray_cluster, s3_server, tree, tmp_path):
    fs = s3_server["fs"]
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    # An object store has no empty folders: compare with the tree without its empty class.
    local_tree = tmp_path / "train"
    shutil.copytree(tree, local_tree, ignore=lambda folder, names: [n for n in names if n.endswith("_empty")])
    fs.put(str(local_tree), f"{BUCKET}/imagenet/train", recursive=True)
    local = tmp_path / "local"
    assert run_tokenize(tiny_config([str(local_tree)], local, num_actors=1, images_per_shard=2)) == 0
    cfg = tiny_config([f"s3://{BUCKET}/imagenet/train"], f"s3://{BUCKET}/tokens-folder", num_actors=1,
                      images_per_shard=2)
    cfg.storage_options = s3_server["storage_options"]
    assert run_tokenize(cfg) == 0
    for path in sorted((local / "tokens").glob("*.parquet")):
        assert fs.cat_file(f"{BUCKET}/tokens-folder/tokens/{path.name}") == path.read_bytes(), path.name
    assert json.loads(fs.cat_file(f"{BUCKET}/tokens-folder/classes.json"))["classes"][0] == "n01440764"


def test_parquet_written_by_datasets(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "in").mkdir()
    hf_dataset_parquet(tmp_path / "in" / "train-00000.parquet", with_paths=False, tmp_path=tmp_path)
    out = tmp_path / "out"
    assert run_tokenize(tiny_config([str(tmp_path / "in" / "*.parquet")], out, num_actors=1)) == 0
    rows = rows_of(out)
    assert [(k, r["label"], r["status"]) for k, r in rows.items()] == [
        ("00000000", 0, "ok"), ("00000001", 1, "ok"), ("00000002", 0, "ok"), ("00000003", None, "ok")]
    assert json.loads((out / "classes.json").read_text())["classes"] == ["cat", "dog"]
    assert verify_output(str(out), [str(tmp_path / "in" / "*.parquet")]).clean
    with pytest.raises(Exception, match="--image-column 'pixels'"):
        run_tokenize(tiny_config([str(tmp_path / "in" / "*.parquet")], tmp_path / "o2", image_column="pixels"))
