"""The training data order: shares, epochs, one variant of each image per epoch, positions, and the
rows a rank loads from real token files. No Ray: the plan is a pure function."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sinks.schema import TokenRow, build_table, token_schema, variant_names
from pipeline.sinks.writer import parquet_bytes
from pipeline.var.data import open_token_source
from pipeline.var.data_plan import (DataPlan, Segment, candidate_ranges, epoch_rows, image_rows, make_plan,
                                    split_images)
from pipeline.var.token_share import ShareLoader, load_share, rows_per_image

NAMES = [n for _, _, n in variant_names(("hflip",), 2)]   # orig hflip crop0 crop0+hflip crop1 crop1+hflip


def test_image_rows_group_variants_and_skip_failures():
    status = ["ok"] * 6 + ["decode_error"] + ["ok", "encode_error", "ok"]
    variant = NAMES + ["orig"] + ["orig", "hflip", "crop0"]
    image, counts = image_rows(status, variant)
    assert image.tolist() == [0] * 6 + [-1] + [1, -1, 1]
    assert counts.tolist() == [6, 2]
    start, count = candidate_ranges(image, variant, 2)
    # image 0: its 4 crop rows (rows 2..5); image 1: its one ok crop (row 7 of the ok rows 0..7)
    assert (start.tolist(), count.tolist()) == ([2, 7], [4, 1])
    plain, plain_counts = image_rows(["ok", "bad", "ok"], None)
    assert plain.tolist() == [0, -1, 1] and plain_counts.tolist() == [1, 1]
    assert [c.tolist() for c in candidate_ranges(plain, None, 2)] == [[0, 1], [1, 1]]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shares_cover_every_image_once_and_balance(world):
    per_file = [7, 0, 3, 12, 1]
    shares = split_images(per_file, world)
    seen = [(s.file, i) for share in shares for s in share for i in range(s.first, s.end)]
    assert sorted(seen) == [(f, i) for f, n in enumerate(per_file) for i in range(n)]
    sizes = [sum(s.end - s.first for s in share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def _synthetic(images: int, rows_each: int, crops_from: int) -> tuple[np.ndarray, np.ndarray, int]:
    """cand ranges of `images` images with `rows_each` rows, the last rows_each - crops_from crops."""
    start = np.arange(images) * rows_each + crops_from
    return start, np.full(images, rows_each - crops_from), images * rows_each


def test_one_variant_of_each_image_per_epoch():
    plan = DataPlan(seed=3, world=1, per_rank_batch=4, all_variants=False, steps_per_epoch=5, digest="x")
    start, count, n_rows = _synthetic(images=22, rows_each=6, crops_from=2)
    chosen = []
    for epoch in range(6):
        rows = epoch_rows(plan, epoch, 0, start, count, n_rows)
        assert len(rows) == 20  # 5 full batches of 4; 2 images sit this epoch out
        image = rows // 6
        assert len(set(image.tolist())) == 20  # each image at most once per epoch
        assert ((rows % 6) >= 2).all()  # a crop row, never the centre crop
        assert np.array_equal(rows, epoch_rows(plan, epoch, 0, start, count, n_rows))  # a pure function
        chosen.append(dict(zip(image.tolist(), rows.tolist())))
    assert len({tuple(sorted(c.items())) for c in chosen}) == 6  # every epoch its own order and variants
    image5 = {c[5] for c in chosen if 5 in c}
    assert len(image5) >= 2  # an image gets different crops in different epochs
    other_seed = DataPlan(**{**plan.__dict__, "seed": 4})
    assert not np.array_equal(epoch_rows(other_seed, 0, 0, start, count, n_rows), epoch_rows(plan, 0, 0, start, count, n_rows))


def test_all_variants_mode_uses_every_row_once():
    plan = DataPlan(seed=0, world=1, per_rank_batch=6, all_variants=True, steps_per_epoch=22, digest="x")
    start, count, n_rows = _synthetic(images=22, rows_each=6, crops_from=2)
    rows = epoch_rows(plan, 1, 0, start, count, n_rows)
    assert sorted(rows.tolist()) == list(range(132))
    assert plan.position(0) == (0, 0) and plan.position(45) == (2, 1)


def test_every_rank_gets_the_same_number_of_rows_per_step():
    per_image = [np.array([6] * 7), np.array([6] * 3), np.array([1, 6, 6])]  # rows per image, 13 images
    plan = make_plan(["a", "b", "c"], per_image, seed=0, world=3, per_rank_batch=2, all_variants=False)
    assert plan.steps_per_epoch == 2  # shares of 4, 4, 5 images: 2 full batches each
    everything = make_plan(["a", "b", "c"], per_image, seed=0, world=3, per_rank_batch=2, all_variants=True)
    assert everything.steps_per_epoch == 12  # shares of 24, 24, 25 rows: 12 batches of 2 each
    assert plan.digest == everything.digest
    assert make_plan(["a", "b", "x"], per_image, seed=0, world=3, per_rank_batch=2, all_variants=False).digest != plan.digest


def _write_variant_file(path, tokenizer, tokens, labels, shard: str) -> None:
    """A token file with hflip and crop:2 variants (as the tokenize job writes them) + a failed sample."""
    side = 16 * tokenizer.patch_nums[-1]
    shapes = [v for p in tokenizer.patch_nums for v in (p, p)]
    rows, i = [], 0
    for s in range(len(tokens) // len(NAMES)):
        for name in NAMES:
            rows.append(TokenRow(key=f"{shard}-{s}", shard=shard, label=int(labels[s]), height=side, width=side,
                                 height_padded=side, width_padded=side, tokens=tokens[i].numpy(),
                                 scale_shapes=shapes, variant=name, crop_box=(0, 0, side, side)))
            i += 1
    rows.append(TokenRow(key=f"{shard}-bad", shard=shard, status="decode_error", error="x", variant="orig"))
    meta = {"tokenizer": tokenizer.name, "fingerprint": tokenizer.fingerprint(), "patch_nums": list(tokenizer.patch_nums),
            "vocab_size": tokenizer.vocab_size, "groups": 1, "variants": NAMES}
    table = build_table(rows, token_schema(tokenizer.vocab_size, with_variant=True, metadata=meta))
    path.write_bytes(parquet_bytes(table))


def test_ranks_load_disjoint_shares_of_real_files(tmp_path, small_tokenizer):
    from tests.var.conftest import photo_crops

    images, labels = photo_crops(36, 64)
    tokens = small_tokenizer.encode(images).flat()
    for f in range(2):
        _write_variant_file(tmp_path / f"s{f}.parquet", small_tokenizer, tokens[18 * f:18 * (f + 1)],
                            labels[3 * f:3 * (f + 1)], f"s{f}")
    source = open_token_source([str(tmp_path / "s0.parquet"), str(tmp_path / "s1.parquet")])
    rows = rows_per_image(source)
    assert [r.tolist() for r in rows] == [[6, 6, 6], [6, 6, 6]]
    plan = make_plan(source.files, rows, seed=1, world=2, per_rank_batch=1, all_variants=False)
    shares = split_images([3, 3], 2)
    assert shares == [[Segment(0, 0, 3)], [Segment(1, 0, 3)]]
    seen = []
    for rank, share in enumerate(shares):
        loader = ShareLoader(source, share, plan, rank, seq_len=30, null_label=1000)
        try:
            batches = [loader.batch(step) for step in range(plan.steps_per_epoch)]
            assert all(t.shape == (1, 30) and t.dtype.is_floating_point is False for t, _ in batches)
            again = [loader.batch(step) for step in range(plan.steps_per_epoch)]
            assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
            seen += [tuple(t[0].tolist()) for t, _ in batches]
        finally:
            loader.close()
        loaded = load_share(source, share, 30, 1000)
        assert loaded.tokens.shape == (18, 30) and loaded.images == 3 and loaded.cand_count.tolist() == [4, 4, 4]
    # one crop row of each of the 6 images: 6 different rows, each among its image's crop rows
    crop_rows = {tuple(tokens[i].tolist()) for i in range(36) if i % 6 >= 2}
    assert len(set(seen)) == 6 and set(seen) <= crop_rows


def test_commit_records_count_images_like_the_files(token_dir):
    """Without variants the driver takes each file's image count from its commit record."""
    import dataclasses

    source = open_token_source(str(token_dir))
    assert all("status_counts" in m for m in source.manifests)
    from_records = rows_per_image(source)
    from_files = rows_per_image(dataclasses.replace(source, manifests=()))
    assert [r.tolist() for r in from_records] == [r.tolist() for r in from_files] == [[1] * 24, [1] * 24]
