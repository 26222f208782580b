"""--variants crop:K: K seeded random crops of VAR's training transform per image, each row with its
crop box; the same bytes on every run and whatever the number of actors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.runner.config import TokenizeConfig
from pipeline.runner.crop_views import crop_draw
from pipeline.runner.job import run_tokenize
from pipeline.sinks.schema import is_crop_variant, parse_variants, variant_names
from pipeline.runner.verify import verify_output
from pipeline.sources.tar_stream import iter_samples
from pipeline.images import PreprocessConfig, apply_policy, policy_views, random_crop_box
from tests.job.conftest import tiny_config


def _photo(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_variant_names_parse_and_order():
    assert parse_variants(["crop:2", "hflip", "orig"]) == (("hflip",), 2)
    names = [n for _, _, n in variant_names(("hflip",), 2)]
    assert names == ["orig", "hflip", "crop0", "crop0+hflip", "crop1", "crop1+hflip"]
    assert [n for _, _, n in variant_names(("hflip", "vflip"), 0)] == ["orig", "hflip", "vflip"]  # as before
    assert [is_crop_variant(n) for n in names] == [False, False, True, True, True, True]
    for bad in (["crop:0"], ["crop:x"], ["crop:2", "crop:3"], ["rotate"]):
        with pytest.raises(ValueError):
            parse_variants(bad)
    cfg = TokenizeConfig(input=["a.tar"], output="o", tokenizer="t", variants=["crop:2"], image_policy="resize")
    with pytest.raises(ValueError, match="center-crop"):
        cfg.validate()


def test_views_are_the_reference_transform():
    """View 0 is the default centre crop bit for bit; crop i is resize(shorter side 72) then
    crop(box) in Pillow, at the box the seed gives, inside the resized image."""
    cfg = PreprocessConfig(size=64)
    for w, h in ((150, 97), (64, 300), (2000, 70)):  # landscape, portrait, extreme aspect ratio
        image = _photo(w, h)
        draws = [crop_draw(7, "key-1", i) for i in range(3)]
        views, boxes = policy_views(image, cfg, draws)
        assert views.shape == (4, 64, 64, 3) and views.dtype == np.uint8
        assert np.array_equal(views[0], apply_policy(image, cfg))
        size = (72, int(72 * h / w)) if w <= h else (int(72 * w / h), 72)  # torchvision Resize(72)
        resized = image.resize(size, Image.Resampling.LANCZOS)
        for view, box in zip(views[1:], boxes[1:]):
            left, top, right, bottom = box
            assert right - left == bottom - top == 64
            assert 0 <= left and right <= resized.width and 0 <= top and bottom <= resized.height
            if w <= 16 * h and h <= 16 * w:  # the normal path: the reference's op order exactly
                assert np.array_equal(view, np.array(resized.crop(box)))
    # Seeds: a pure function of (job seed, key, index); other seeds, keys and indices move the crop.
    assert crop_draw(7, "k", 0) == crop_draw(7, "k", 0)
    boxes = {random_crop_box(500, 72, 64, crop_draw(s, k, i)) for s in (0, 1) for k in ("a", "b") for i in range(4)}
    assert len(boxes) >= 12
    # Uniform over the valid offsets (a chi-square-free sanity check: both ends are reached).
    lefts = [random_crop_box(80, 72, 64, crop_draw(0, "k", i))[0] for i in range(400)]
    assert min(lefts) == 0 and max(lefts) == 16


def _crop_config(shards, out, **kw) -> TokenizeConfig:
    return tiny_config(shards, out, variants=["crop:2", "hflip"], seed=3, batch_size=3, **kw)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "tokens").glob("*.parquet"))}


def test_crop_variants_are_byte_identical_across_runs_and_actor_counts(ray_cluster, corpus_dir, corpus_pattern,
                                                                        tmp_path):
    one = tmp_path / "one"
    assert run_tokenize(_crop_config([corpus_pattern], one, num_actors=1)) == 0
    again = tmp_path / "again"
    assert run_tokenize(_crop_config([corpus_pattern], again, num_actors=1)) == 0
    two = tmp_path / "two"
    assert run_tokenize(_crop_config([corpus_pattern], two, num_actors=2)) == 0
    assert len(_files(one)) == 3
    assert _files(one) == _files(again) == _files(two)
    assert verify_output(str(one), [corpus_pattern]).clean

    table = pq.read_table(one / "tokens" / "sample-000000.parquet")
    rows = table.to_pylist()
    names = ["orig", "hflip", "crop0", "crop0+hflip", "crop1", "crop1+hflip"]
    assert [r["variant"] for r in rows] == names * 4
    meta = json.loads(table.schema.metadata[b"scaletok.variants"])
    assert meta == names
    samples = list(iter_samples(str(corpus_dir / "sample-000000.tar")))
    for s, sample in enumerate(samples):
        mine = rows[6 * s:6 * s + 6]
        assert {r["key"] for r in mine} == {sample.key}
        image = Image.open(io.BytesIO(next(m.data for e, m in sample.members.items() if e in ("jpg", "png"))))
        views, boxes = policy_views(image, PreprocessConfig(size=64), [crop_draw(3, sample.key, i) for i in range(2)])
        # every row records the box it was encoded from; a flip keeps its crop's box
        assert [r["crop_box"] for r in mine] == [list(b) for b in boxes for _ in range(2)]
        assert mine[2]["tokens"] != mine[4]["tokens"] or boxes[1] == boxes[2]
    # Without crops the files keep their schema: no crop_box column (the default path is unchanged).
    plain = tmp_path / "plain"
    assert run_tokenize(tiny_config([str(corpus_dir / "sample-000000.tar")], plain, num_actors=1,
                                    batch_size=3)) == 0
    assert "crop_box" not in pq.read_schema(plain / "tokens" / "sample-000000.parquet").names
    orig_rows = [r for r in rows if r["variant"] == "orig"]
    plain_rows = pq.read_table(plain / "tokens" / "sample-000000.parquet").to_pylist()
    assert [r["tokens"] for r in orig_rows] == [r["tokens"] for r in plain_rows]  # orig tokens do not depend on crops
