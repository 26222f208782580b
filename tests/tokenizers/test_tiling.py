"""Tile planner and window blending, independent of any model."""

import pytest
import torch

from pipeline.tokenizers import tiling


@pytest.mark.parametrize("length,tile,overlap,expected", [
    (300, 512, 256, 304), (600, 512, 256, 768), (900, 512, 256, 1024), (1000, 512, 256, 1024),
    (200, 128, 32, 224), (512, 512, 256, 512), (64, 512, 256, 64),
])
def test_padded_length(length, tile, overlap, expected):
    multiple = 16
    assert tiling.padded_length(length, tile, overlap, multiple) == expected


def test_plan_covers_canvas_and_last_tile_ends_at_border():
    plan = tiling.plan_tiles(600, 900, 512, 256, multiple_of=8)
    assert (plan.padded_height, plan.padded_width) == (768, 1024)
    assert plan.grid == (2, 3)
    assert plan.origins_x == (0, 256, 512) and plan.origins_y[-1] + 512 == 768
    covered = torch.zeros(plan.padded_height, plan.padded_width)
    for y, x in plan.tiles:
        covered[y:y + 512, x:x + 512] += 1
    assert covered.min() >= 1


def test_small_image_gets_one_clipped_tile_instead_of_a_crash():
    plan = tiling.plan_tiles(100, 700, 512, 256, multiple_of=16)
    assert plan.padded_height == 112 and plan.origins_y == (0,)
    tiles = tiling.crop_tiles(torch.zeros(1, 3, plan.padded_height, plan.padded_width), plan)
    assert {tuple(t.shape[-2:]) for t in tiles} == {(112, 512)}


def test_weights_sum_to_one_everywhere_and_constant_blends_to_constant():
    plan = tiling.plan_tiles(300, 500, 128, 32, multiple_of=8).scaled(8)
    tiles = [torch.full((2, 4, *t.shape[-2:]), 3.25) for t in
             tiling.crop_tiles(torch.zeros(1, 1, plan.padded_height, plan.padded_width), plan)]
    out = tiling.blend(tiles, plan)
    assert torch.allclose(out, torch.full_like(out, 3.25), atol=1e-6, rtol=0)
    ones = tiling.blend([torch.ones_like(t) for t in tiles], plan)
    assert torch.allclose(ones, torch.ones_like(ones), atol=1e-6, rtol=0)


def test_no_seams_on_a_ramp():
    """A smooth ramp cut into tiles comes back unchanged (blending is an affine combination)."""
    plan = tiling.plan_tiles(96, 160, 64, 16, multiple_of=8)
    yy, xx = torch.meshgrid(torch.arange(plan.padded_height), torch.arange(plan.padded_width), indexing="ij")
    ramp = (0.01 * yy + 0.02 * xx).float()[None, None]
    out = tiling.blend(tiling.crop_tiles(ramp, plan), plan)
    assert torch.allclose(out, ramp, atol=1e-5)


def test_reference_convention_zeroes_the_outer_row_and_column():
    plan = tiling.plan_tiles(256, 384, 128, 64)
    tiles = [torch.ones(1, 1, 128, 128) for _ in plan.tiles]
    out = tiling.blend(tiles, plan, convention="reference")
    assert out[0, 0, 0, :].abs().max() == 0 and out[0, 0, :, 0].abs().max() == 0
    assert out[0, 0, 64, 64] > 0.99


def test_hann_matches_definition():
    n = 9
    k = torch.arange(n, dtype=torch.float64)
    ref = 0.5 - 0.5 * torch.cos(2 * torch.pi * k / (n - 1))
    assert torch.allclose(tiling.hann(n).double(), ref, atol=1e-7)


def test_pad_to_reflects_and_falls_back_to_replicate():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    r = tiling.pad_to(x, 4, 6)
    assert r[0, 0, 3].tolist() == x[0, 0, 1].tolist() + [x[0, 0, 1, 2].item(), x[0, 0, 1, 1].item()]
    big = tiling.pad_to(x, 10, 4)  # more padding than reflect allows
    assert big.shape[-2:] == (10, 4) and torch.equal(big[0, 0, 9], x[0, 0, 2])
    with pytest.raises(ValueError):
        tiling.pad_to(x, 2, 4)


@pytest.mark.parametrize("tile,overlap", [(64, 64), (64, 80), (0, 0)])
def test_invalid_tile_settings(tile, overlap):
    with pytest.raises(ValueError):
        tiling.plan_tiles(100, 100, tile, overlap)


def test_overlap_too_small_for_blending_is_an_error():
    plan = tiling.plan_tiles(64, 64, 32, 1)
    with pytest.raises(ValueError, match="zero blending weight"):
        tiling.blend([torch.ones(1, 1, 32, 32) for _ in plan.tiles], plan)
