"""SVQVAE against the reference's outputs (tests/fixtures/svqvae: seeded weights, ch=32, tile 128 /
overlap 64, scales 4, 8, 16 where 16 is full resolution) and the fixes of its three failure modes.
See tests/fixtures/svqvae/README.md for what each file is and the suggested tolerances."""

import json

import numpy as np
import pytest
import torch

from pipeline.tokenizers import MultiScaleTokens, load_tokenizer

TILE, OVERLAP = 128, 64
RECON_ATOL = 1e-3  # fixture README: float16-stored reconstructions


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    root = fixtures_dir / "svqvae"

    def load(name):
        arr = np.load(root / name)
        return torch.from_numpy(arr.astype(np.float32) if arr.dtype == np.float16 else arr)
    load.root = root
    return load


@pytest.fixture(scope="module")
def config(fx):
    cfg = json.loads((fx.root / "config.json").read_text())
    return {**cfg["model_args"], "ch": cfg["encoder_kwargs"]["ch"]}


def make(fx, config, **opts):
    opts = {"tile_size": TILE, "overlap": OVERLAP, "patch_nums": (4, 8, 16), **opts}
    return load_tokenizer("svqvae", str(fx.root / "model.safetensors"), config, **opts)


@pytest.fixture(scope="module")
def ref_tok(fx, config):
    return make(fx, config, reference_quirks=True)


@pytest.fixture(scope="module")
def fixed_tok(fx, config):
    return make(fx, config)


@pytest.fixture(scope="module")
def ref_tokens(ref_tok, fx):
    # p=1 rides along: scales are independent, so it cannot change the others.
    return ref_tok.encode(fx("inputs.npy"), patch_nums=(1, 4, 8, 16))


@pytest.fixture(scope="module")
def fixed_tokens(fixed_tok, fx):
    return fixed_tok.encode(fx("inputs.npy"), patch_nums=(1, 4, 8, 16))


def assert_close(img, ref, atol=RECON_ATOL):
    assert img.shape == ref.shape
    assert (img - ref).abs().max().item() <= atol


# ---------------------------------------------------------------- conformance (reference_quirks=True)
def test_tiled_multiscale_indices_identical(ref_tokens, fx):
    assert ref_tokens.image_size == (200, 300) and ref_tokens.padded_size == (256, 320)
    assert ref_tokens.scale_shapes[1:] == [(8, 10), (16, 20), (32, 40)]
    for k, p in enumerate((4, 8, 16), start=1):
        assert torch.equal(ref_tokens.grids[k], fx(f"indices_{p}.npy")), f"p={p}"
    # The reference quantises the all-zero outermost latent ring to argmin of the rows' fp32 norms.
    assert set(ref_tokens.grids[3][:, 0, :].unique().tolist()) == {54}


@pytest.mark.parametrize("k,p", [(1, 4), (2, 8), (3, 16)])
def test_tiled_multiscale_reconstruction(ref_tok, ref_tokens, fx, k, p):
    assert_close(ref_tok.decode(ref_tokens, upto=k + 1), fx(f"recon_{p}.npy"))


def test_blended_and_resized_latents(ref_tok, ref_tokens, fx):
    """The quantiser's inputs: the Hann-blended latent of the tiles, then its resize to each
    scale's grid (area down), as the reference assembles them."""
    from pipeline.tokenizers.svqvae_tiling import resize_latent

    with torch.inference_mode():
        blended = ref_tok.encode_latent(fx("inputs.npy"))
    assert (blended - fx("latent_blended.npy")).abs().max().item() < 1e-4
    for geometry, p in zip(ref_tokens.extras["geometries"][1:], (4, 8, 16)):
        resized = resize_latent(blended, geometry)
        assert (resized - fx(f"latent_{p}.npy")).abs().max().item() < 1e-4, f"p={p}"


def test_strip_image(fx, config):
    # One tile per encoder call, as the reference does (the other tests batch 4 tiles per call).
    ref_tok = make(fx, config, reference_quirks=True, tile_batch=1)
    tokens = ref_tok.encode(fx("strip_input.npy"))
    assert tokens.padded_size == (128, 320)
    assert tokens.extras["geometries"][0].grid == (4, 10)
    for k, p in enumerate((4, 8, 16)):
        assert torch.equal(tokens.grids[k], fx(f"strip_indices_{p}.npy")), f"p={p}"
    for k, p in enumerate((4, 8, 16), start=1):
        assert_close(ref_tok.decode(tokens, upto=k), fx(f"strip_recon_{p}.npy"))


def test_single_tile_image_tiled_and_plain(ref_tok, fx):
    x = fx("single_input.npy")
    tokens = ref_tok.encode(x)
    for k, p in enumerate((4, 8, 16)):
        assert torch.equal(tokens.grids[k], fx(f"single_tiled_indices_{p}.npy")), f"p={p}"
    for k, p in enumerate((4, 8, 16), start=1):
        assert_close(ref_tok.decode(tokens, upto=k), fx(f"single_tiled_recon_{p}.npy"))

    plain = ref_tok.encode(x, patch_nums=(16,), tile_size=0)  # the reference's patch_nums=None path
    assert torch.equal(plain.grids[0], fx("single_plain_indices.npy"))
    assert_close(ref_tok.decode(plain), fx("single_plain_recon.npy"))
    with torch.inference_mode():
        latent = ref_tok.model.encode_latent(x)
    assert (latent - fx("single_plain_latent.npy")).abs().max().item() < 1e-4


def test_align_option(fx, config):
    tok = make(fx, config, reference_quirks=True, align=True, patch_nums=(4, 8))
    tokens = tok.encode(fx("inputs.npy"))
    assert torch.equal(tokens.grids[0], fx("align_indices_4.npy"))
    assert torch.equal(tokens.grids[1], fx("align_indices_8.npy"))
    assert_close(tok.decode(tokens, upto=1), fx("align_recon_4.npy"))
    assert_close(tok.decode(tokens, upto=2), fx("align_recon_8.npy"))


# ---------------------------------------------------------------- fixes (the default)
def test_fix_border_latent_and_pixels_not_zero(fixed_tok, fixed_tokens, ref_tokens, fx):
    # The reference's outermost latent ring is exactly zero and its decoded top row / left column black.
    ref_latent = fx("latent_blended.npy")
    assert ref_latent[:, :, 0].abs().max() == 0 and ref_latent[:, :, :, 0].abs().max() == 0
    recon = fx("recon_8.npy")
    assert recon[:, :, 0].max() == 0 and recon[:, :, :, 0].max() == 0

    latent = fixed_tok.encode_latent(fx("strip_input.npy"))
    assert latent.shape == (1, 8, 16, 40)
    ring = torch.cat([latent[:, :, 0], latent[:, :, -1], latent[:, :, :, 0], latent[:, :, :, -1]], dim=-1)
    assert ring.norm(dim=1).min() > 1e-3

    # Only the ring's tokens change; the interior keeps the reference's codes.
    for k in (1, 2, 3):
        assert torch.equal(fixed_tokens.grids[k][:, 1:-1, 1:-1], ref_tokens.grids[k][:, 1:-1, 1:-1])
    assert not torch.equal(fixed_tokens.grids[3][:, 0], ref_tokens.grids[3][:, 0])

    img = fixed_tok.decode(fixed_tokens, upto=3)
    assert img.shape == recon.shape
    assert img[:, :, 0].amax(dim=-1).min() > 0.05 and img[:, :, :, 0].amax(dim=-1).min() > 0.05


def test_fix_images_not_larger_than_overlap(ref_tok, fixed_tok):
    small = torch.rand(1, 3, 64, 200, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="overlap"):
        ref_tok.encode(small)
    tokens = fixed_tok.encode(small)
    assert tokens.padded_size == (128, 256)
    assert tokens.scale_shapes == [(4, 8), (8, 16), (16, 32)]  # 1 x 3 tiles
    img = fixed_tok.decode(tokens)
    assert img.shape == (1, 3, 64, 200) and torch.isfinite(img).all()

    tiny = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))  # pad > size: mirrors twice
    with pytest.raises(ValueError):
        ref_tok.encode(tiny)
    tokens = fixed_tok.encode(tiny, patch_nums=(16,))
    assert tokens.padded_size == (128, 128) and fixed_tok.decode(tokens).shape == (1, 3, 40, 40)


def test_fix_p1_keeps_a_grid_per_tiled_image(ref_tok, ref_tokens, fixed_tok, fixed_tokens):
    assert ref_tokens.scale_shapes[0] == (1, 1)  # the reference collapses 3x4 tiles into one token
    assert fixed_tokens.scale_shapes[0] == (2, 3)  # 32x40 latent at 1/16 resolution, rounded
    img = fixed_tok.decode(fixed_tokens, upto=1)
    assert img.shape == ref_tok.decode(ref_tokens, upto=1).shape == (2, 3, 12, 19)
    assert torch.isfinite(img).all() and img.std() > 0


def test_tokens_read_back_without_extras_decode_the_same(fixed_tok, fixed_tokens):
    stored = MultiScaleTokens.from_flat(fixed_tokens.flat().to(torch.int32), fixed_tokens.scale_shapes,
                                        fixed_tokens.patch_nums, image_size=fixed_tokens.image_size,
                                        padded_size=fixed_tokens.padded_size)
    for upto in (1, 2):
        assert torch.equal(fixed_tok.decode(stored, upto=upto), fixed_tok.decode(fixed_tokens, upto=upto))
