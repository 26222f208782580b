"""The sample corpus builder: real tars read back with tarfile and webdataset, decoded with PIL."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from pipeline.sources.sample_corpus import LABEL_NAMES, SOURCES, write_sample_corpus

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(num_shards=2, samples_per_shard=13, seed=0, max_side=96)  # 26 samples: every source twice


def read_samples(path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus"), **SMALL)


def test_shards_are_named_and_ordered(corpus):
    assert [Path(p).name for p in corpus] == ["sample-000000.tar", "sample-000001.tar"]
    assert all(os.path.getsize(p) > 0 for p in corpus)
    assert not list(Path(corpus[0]).parent.glob("*.partial"))


def test_every_sample_has_image_label_and_meta(corpus):
    keys = []
    for path in corpus:
        samples = read_samples(path)
        assert len(samples) == SMALL["samples_per_shard"]
        for key, members in samples.items():
            keys.append(key)
            assert re.fullmatch(r"s\d{6}", key), key
            image_exts = set(members) & {"jpg", "png"}
            assert len(image_exts) == 1 and set(members) == image_exts | {"cls", "json"}, members.keys()
            ext = image_exts.pop()
            label = int(members["cls"].decode("ascii"))
            meta = json.loads(members["json"])
            assert meta["label"] == label and meta["source"] == LABEL_NAMES[label]
            assert meta["license"] and meta["format"] == ext
            image = Image.open(io.BytesIO(members[ext]))
            image.load()
            assert image.format == {"jpg": "JPEG", "png": "PNG"}[ext]
            assert list(image.size) == meta["size"] and image.mode == meta["mode"]
            left, top, right, bottom = meta["crop"]
            src_w, src_h = meta["source_size"]
            assert 0 <= left < right <= src_w and 0 <= top < bottom <= src_h
    assert keys == [f"s{i:06d}" for i in range(26)]  # unique, contiguous across shards


def test_corpus_varies_in_size_aspect_source_mode_and_format(corpus):
    metas = [json.loads(m["json"]) for p in corpus for m in read_samples(p).values()]
    widths = {m["size"][0] for m in metas}
    heights = {m["size"][1] for m in metas}
    aspects = [m["size"][0] / m["size"][1] for m in metas]
    assert len(widths) > 5 and len(heights) > 5
    assert min(aspects) < 0.8 and max(aspects) > 1.25
    assert all(0.45 <= a <= 2.2 for a in aspects)
    assert max(max(m["size"]) for m in metas) <= SMALL["max_side"]
    assert {m["label"] for m in metas} == set(range(len(SOURCES)))
    assert {m["mode"] for m in metas} == {"RGB", "L"}
    assert {m["format"] for m in metas} == {"jpg", "png"}
    assert {m["flip"] for m in metas} == {True, False}


def test_two_runs_are_byte_identical_and_seed_matters(tmp_path, corpus):
    again = write_sample_corpus(tmp_path / "again", **SMALL)
    assert [Path(a).read_bytes() for a in again] == [Path(c).read_bytes() for c in corpus]
    other = write_sample_corpus(tmp_path / "other", **{**SMALL, "seed": 1})
    assert Path(other[0]).read_bytes() != Path(corpus[0]).read_bytes()


def test_tar_headers_carry_no_wall_clock_time(corpus):
    with tarfile.open(corpus[0]) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1704067200}


def test_sample_depends_only_on_seed_and_index(tmp_path, corpus):
    # Same samples whatever the shard layout: one shard of 26 holds the two shards of 13 in order.
    one = write_sample_corpus(tmp_path, num_shards=1, samples_per_shard=26, seed=0, max_side=96)
    merged = {**read_samples(corpus[0]), **read_samples(corpus[1])}
    assert read_samples(one[0]) == merged


def test_webdataset_reads_the_shards(corpus):
    import webdataset as wds

    dataset = wds.WebDataset(corpus, shardshuffle=False).decode("pil")
    samples = list(dataset)
    assert len(samples) == 26
    for sample in samples:
        image = sample.get("jpg", sample.get("png"))
        assert isinstance(image, Image.Image) and min(image.size) >= 16
        assert 0 <= int(sample["cls"]) < len(SOURCES)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_shards"):
        write_sample_corpus(tmp_path, num_shards=0)
    with pytest.raises(ValueError, match="max_side"):
        write_sample_corpus(tmp_path, max_side=8)


def test_cli_writes_the_same_bytes(tmp_path, corpus):
    script = Path(sys.executable).with_name("scaletok")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]
    out = tmp_path / "cli"
    result = subprocess.run(command + ["sample-corpus", str(out), "--num-shards", "2", "--samples-per-shard", "13",
                                       "--seed", "0", "--max-side", "96"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 shards, 26 samples" in result.stdout
    assert [p.read_bytes() for p in sorted(out.glob("sample-*.tar"))] == [Path(c).read_bytes() for c in corpus]


def test_cli_reports_bad_arguments(tmp_path):
    from jobs.sample_corpus import main

    assert main([str(tmp_path), "--num-shards", "0"]) == 2
