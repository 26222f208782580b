"""Input layouts without Ray: class-folder trees (ImageFolder's labels, virtual shards, keys,
ignored files) and image Parquet (Hugging Face `datasets`' Image feature, img2dataset-style
binary columns, streamed row groups)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.sources.decode import decode_sample
from pipeline.sources.folders import folder_shards, iter_folder_samples, list_folder
from pipeline.sources.image_parquet import class_names, iter_parquet_samples, read_parquet_schema, resolve_columns
from pipeline.sources.inputs import count_shard_samples, iter_shard_samples, plan_inputs
from tests.job.corpus import encode, photo


def imagenet_tree(root: Path) -> Path:
    """train/<wnid>/... with mixed extensions, a nested folder, a stray text file, a loose file
    beside the class folders and an empty class (ImageFolder keeps its index)."""
    files = {"n01440764/n01440764_10026.JPEG": ("astronaut", "JPEG"), "n01440764/n01440764_2.png": ("coffee", "PNG"),
             "n01443537/n01443537_7.jpg": ("chelsea", "JPEG"), "n01443537/extra/deep.Jpeg": ("rocket", "JPEG"),
             "n02102040/n02102040_1.webp": ("astronaut", "WEBP")}
    for rel, (name, fmt) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode(photo(name, 48), fmt))
    (root / "n01443537" / "README.txt").write_text("not an image")
    (root / "loose.jpg").write_bytes(encode(photo("coffee", 32)))
    (root / "n00000000_empty").mkdir()
    return root


def test_class_folders_like_imagefolder(tmp_path):
    root = imagenet_tree(tmp_path / "train")
    listing = list_folder(str(root))
    assert listing.classes == ["n00000000_empty", "n01440764", "n01443537", "n02102040"]
    assert listing.images == ["n01440764/n01440764_10026.JPEG", "n01440764/n01440764_2.png",
                              "n01443537/extra/deep.Jpeg", "n01443537/n01443537_7.jpg", "n02102040/n02102040_1.webp"]
    assert listing.ignored == 2 and set(listing.ignored_examples) == {"loose.jpg", "n01443537/README.txt"}
    shards = folder_shards(listing, images_per_shard=2)
    assert [s.name.rsplit("-", 1)[0] for s in shards] == ["train-000000", "train-000001", "train-000002"]
    assert [s.labels for s in shards] == [(1, 1), (2, 2), (3,)]
    assert folder_shards(list_folder(str(root)), 2) == shards  # deterministic
    samples = list(iter_folder_samples(shards[0], None, 1 << 20))
    assert [s.key for s in samples] == ["n01440764/n01440764_10026", "n01440764/n01440764_2"]
    decoded = [decode_sample(s) for s in samples]
    assert all(d.ok for d in decoded) and [d.label for d in decoded] == [1, 1]
    assert count_shard_samples(shards[1]) == (2, ["n01443537/extra/deep", "n01443537/n01443537_7"])
    # a file that changed gets its shard a new name (and redone), the others keep theirs
    (root / "n02102040" / "n02102040_0.jpg").write_bytes(encode(photo("rocket", 32)))
    changed = folder_shards(list_folder(str(root)), 2)
    assert changed[:2] == shards[:2] and changed[2].name != shards[2].name
    # a file that vanished after listing, and one over the size limit, become rows
    os.unlink(root / "n01440764" / "n01440764_2.png")
    rows = [decode_sample(s) for s in iter_folder_samples(shards[0], None, 1 << 20)]
    assert rows[0].ok and rows[1].status == "read_error"
    assert decode_sample(next(iter_folder_samples(shards[0], None, 100))).status == "too_large"


def test_flat_folders_and_what_plan_inputs_refuses(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"img{i}.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    plan = plan_inputs(str(flat), images_per_shard=10)
    assert plan.layout == "folder" and plan.class_names is None and plan.shards[0].labels == (None, None, None)
    assert decode_sample(next(iter_shard_samples(plan.shards[0]))).label is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        plan_inputs(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is a directory"):
        plan_inputs([str(flat), str(flat / "img0.png")])


def hf_dataset_parquet(path: Path, with_paths: bool, tmp_path: Path) -> list[str]:
    """Written by Hugging Face `datasets` itself (Image + ClassLabel features)."""
    datasets = pytest.importorskip("datasets", reason="the `datasets` package is a test dependency")
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    if with_paths:
        images = []
        for i, name in enumerate(names):
            p = tmp_path / f"{name}_{i}.jpg"
            p.write_bytes(encode(photo(name, 40)))
            images.append(str(p))
    else:
        images = [photo(name, 40) for name in names]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, -1]}, features=features)
    ds.to_parquet(str(path))
    return images


def test_parquet_written_by_hugging_face_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = tmp_path / "train-00000.parquet"
    hf_dataset_parquet(path, with_paths=False, tmp_path=tmp_path)
    schema = read_parquet_schema(str(path))
    columns = resolve_columns(schema)
    assert (columns.image, columns.image_is_struct, columns.label, columns.class_label) == ("image", True, "label", True)
    assert class_names(schema, columns) == ["cat", "dog"]
    samples = list(iter_parquet_samples(str(path), None, columns, 1 << 20))
    assert [s.key for s in samples] == ["00000000", "00000001", "00000002", "00000003"]  # no paths: row index
    decoded = [decode_sample(s) for s in samples]
    assert all(d.ok for d in decoded) and [d.label for d in decoded] == [0, 1, 0, None]  # -1: no label
    plan = plan_inputs(str(tmp_path / "*.parquet"))
    assert plan.layout == "parquet" and plan.class_names == ["cat", "dog"] and plan.shards[0].name == "train-00000"
    with_paths = tmp_path / "paths" / "part-0.parquet"
    with_paths.parent.mkdir()
    paths = hf_dataset_parquet(with_paths, with_paths=True, tmp_path=tmp_path)
    keys = [s.key for s in iter_parquet_samples(str(with_paths), None, resolve_columns(read_parquet_schema(str(with_paths))),
                                                1 << 20)]
    assert keys == paths  # the Image feature's path field, as datasets recorded it


def test_binary_columns_named_or_found_and_row_groups_streamed(tmp_path):
    jpgs = [encode(photo("astronaut", 24 + i)) for i in range(40)]
    table = pa.table({"key": [f"k{i:03d}" for i in range(40)], "jpg": jpgs, "caption": ["x"] * 40,
                      "cls": pa.array([i % 3 for i in range(40)], pa.int64())})
    path = tmp_path / "img2dataset.parquet"
    pq.write_table(table, path, row_group_size=8)
    columns = resolve_columns(table.schema)
    assert (columns.image, columns.image_is_struct, columns.label, columns.key) == ("jpg", False, "cls", "key")
    seen = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            seen.append(batch.num_rows)
            yield batch

    pq.ParquetFile.iter_batches = spy
    try:
        samples = list(iter_parquet_samples(str(path), None, columns, 1 << 20))
    finally:
        pq.ParquetFile.iter_batches = real
    assert [s.key for s in samples] == [f"k{i:03d}" for i in range(40)] and max(seen) <= 64
    assert [decode_sample(s).label for s in samples[:4]] == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="--image-column 'nope'"):
        resolve_columns(table.schema, image="nope")
    with pytest.raises(ValueError, match="not an integer"):
        resolve_columns(table.schema, label="caption")
    two = pa.table({"a": [b"x"], "b": [b"y"]})
    with pytest.raises(ValueError, match="pass --image-column"):
        resolve_columns(two.schema)
    assert count_shard_samples(plan_inputs(str(path)).shards[0], None, columns)[0] == 40
    struct_with_null = pa.table({"image": pa.array([{"bytes": None, "path": "elsewhere.jpg"}],
                                                    pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    pq.write_table(struct_with_null, tmp_path / "refs.parquet")
    only = next(iter_parquet_samples(str(tmp_path / "refs.parquet"), None, resolve_columns(struct_with_null.schema),
                                     1 << 20))
    assert decode_sample(only).status == "missing_image" and "elsewhere.jpg" in only.error
    image = Image.open(io.BytesIO(jpgs[0]))
    assert np.asarray(decode_sample(samples[0]).image).shape[:2] == (image.height, image.width)
