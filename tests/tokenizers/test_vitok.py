"""ViTok-v2 conformance against the reference fixtures (tests/fixtures/vitok, see its README):
NaFlex patch dictionaries exact, latents and reconstructions within the README's tolerances,
plus properties the job relies on (masking, token budget, float16 rows, checkpoint errors)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.tokenizers import load_tokenizer, naflex
from pipeline.tokenizers.checkpoints import CheckpointError
from pipeline.tokenizers.vit_blocks import ViTokAE
from pipeline.tokenizers.vitok import (
    ARCH_KEYS,
    decode_variant,
    resolve_config,
    rows_to_tokens,
    tokens_to_rows,
)

Z_ATOL = 1e-4        # README: fp32 vs fp64 2.6e-6, alone vs padded batch 1.1e-6
PIXEL_ATOL = 2e-4    # README: fp32 vs fp64 5.6e-6, alone vs padded batch 3.3e-6
PATCH, MAX_TOKENS = 16, 64
PD_KEYS = naflex.PATCH_DICT_KEYS


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    return fixtures_dir / "vitok"


@pytest.fixture(scope="module")
def meta(fx):
    return json.loads((fx / "meta.json").read_text())


@pytest.fixture(scope="module")
def tok(fx, meta):
    # Exactly how checks outside the suite build it: the fixture's AE kwargs as the config.
    return load_tokenizer("vitok", str(fx), meta["config"]["ae_kwargs"], max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def images(fx, tok):
    """The fixture's three uint8 images through our preprocessing, as (3, H, W) in [-1, 1]."""
    return tok.preprocess_list([np.load(fx / f"image_{i}_u8.npy") for i in range(3)])


def _valid(fx):
    return np.load(fx / "pd_patch_mask.npy")


# ------------------------------------------------------------------------ patch dictionaries
def test_patch_dictionaries_identical_to_reference(fx, images):
    batch = naflex.patchify_batch(images, PATCH, MAX_TOKENS)
    for key in PD_KEYS:
        ref = np.load(fx / f"pd_{key}.npy")
        ours = batch[key].numpy()
        assert ours.dtype == ref.dtype, key
        np.testing.assert_array_equal(ours, ref, err_msg=key)


def test_postprocess_identical_to_reference(fx, images):
    batch = {k: torch.from_numpy(np.load(fx / f"pd_{k}.npy")) for k in PD_KEYS}
    back = naflex.postprocess(batch, PATCH)  # [-1, 1] -> [-1, 1]: the exact inverse
    for image, original in zip(back, images):
        assert torch.equal(image, original)
    zero_one = naflex.postprocess(batch, PATCH, output_format="zero_to_one")
    np.testing.assert_array_equal(zero_one[1].numpy(), np.load(fx / "postprocess_zero_to_one_1.npy"))


def test_patchify_refuses_images_over_budget():
    with pytest.raises(ValueError, match="more than max_tokens=4"):
        naflex.patchify(torch.zeros(3, 40, 40), PATCH, 4)


def test_token_budget_sizes_match_reference(meta):
    for case in meta["fit_to_token_budget"]:
        args = (case["h"], case["w"], case["patch"], case["max_tokens"])
        assert naflex.fit_to_token_budget(*args) == tuple(case["result"]), case
        # enforce=True only differs where the reference overshoots (erratum 3), and then fits.
        h, w = naflex.fit_to_token_budget(*args, enforce=True)
        assert math.ceil(h / case["patch"]) * math.ceil(w / case["patch"]) <= case["max_tokens"]
        if case["within_budget"]:
            assert (h, w) == tuple(case["result"])


# ------------------------------------------------------------------------ the autoencoder
def test_latents_and_decoded_patches_match_reference_batch(fx, tok):
    batch = {k: torch.from_numpy(np.load(fx / f"pd_{k}.npy")) for k in PD_KEYS}
    valid = _valid(fx)
    args = (batch["row_idx"], batch["col_idx"], batch["patch_mask"])
    with torch.inference_mode():
        z = tok.model.encode(batch["patches"], *args)
        patches = tok.model.decode(z, *args)
    np.testing.assert_allclose(z.numpy()[valid], np.load(fx / "z.npy")[valid], rtol=0, atol=Z_ATOL)
    out = naflex.postprocess({**batch, "patches": patches}, PATCH)
    for i, image in enumerate(out):
        np.testing.assert_allclose(image.numpy(), np.load(fx / f"recon_{i}.npy"), rtol=0, atol=PIXEL_ATOL)


def test_encode_decode_each_image_matches_reference(fx, meta, tok, images):
    z_ref = np.load(fx / "z.npy")
    for i, image in enumerate(images):
        tokens = tok.encode(image[None])
        rows, cols = meta["images"][i]["grid_rows"], meta["images"][i]["grid_cols"]
        assert tokens.continuous and tokens.scale_shapes == [(rows, cols)]
        assert tokens.image_size == tuple(image.shape[-2:])
        assert tokens.padded_size == (rows * PATCH, cols * PATCH)
        expected = z_ref[i, :rows * cols].reshape(rows, cols, -1)
        np.testing.assert_allclose(tokens.grids[0][0].numpy(), expected, rtol=0, atol=Z_ATOL)
        recon = tok.decode(tokens)
        np.testing.assert_allclose(recon[0].numpy(), np.load(fx / f"recon_{i}.npy"), rtol=0, atol=PIXEL_ATOL)


def test_mixed_sizes_in_one_masked_batch_equal_images_alone(fx, tok, images):
    tokens = tok.encode_list(images)
    assert tokens.grids[0].shape == (3, 10, 10, 16)  # padded to the largest grid
    assert tokens.extras["grid_rows"] == [6, 5, 10] and tokens.extras["grid_cols"] == [8, 10, 4]
    for i, image in enumerate(images):
        alone = tok.encode(image[None]).grids[0][0]
        r, c = alone.shape[:2]
        torch.testing.assert_close(tokens.grids[0][i, :r, :c], alone, rtol=0, atol=Z_ATOL)
        assert not tokens.grids[0][i, r:].any() and not tokens.grids[0][i, :, c:].any()
    for i, recon in enumerate(tok.decode_list(tokens)):
        np.testing.assert_allclose(recon.numpy(), np.load(fx / f"recon_{i}.npy"), rtol=0, atol=PIXEL_ATOL)
    with pytest.raises(ValueError, match="decode_list"):
        tok.decode(tokens)


def test_flash_semantics_let_padding_change_latents(fx, meta, images):
    # The reference default backend does not mask: padding tokens alter valid latents (README: 2.39).
    unmasked = load_tokenizer("vitok", str(fx), {**meta["config"]["ae_kwargs"], "attn_backend": "flash"})
    batch = {k: torch.from_numpy(np.load(fx / f"pd_{k}.npy")) for k in PD_KEYS}
    with torch.inference_mode():
        z = unmasked.model.encode(batch["patches"], batch["row_idx"], batch["col_idx"], batch["patch_mask"])
    valid = _valid(fx)
    assert np.abs(z.numpy()[valid] - np.load(fx / "z.npy")[valid]).max() > 0.5


# ------------------------------------------------------------------------ a real photo
def test_round_trip_real_photo_through_float16_rows(tok):
    from skimage import data

    photo = data.chelsea()  # 300 x 451, far over a 64-token budget
    x = tok.preprocess([photo])
    assert x.shape == (1, 3, 300, 451)
    tokens = tok.encode(x)
    # Budget resize: 19 x 29 patches -> 6 x 9 (96 x 144 px), aspect ratio kept.
    assert tokens.scale_shapes == [(6, 9)] and tokens.extras["orig_height"] == [96]
    assert tokens.extras["orig_width"] == [144] and tokens.image_size == (300, 451)
    z = tokens.grids[0]
    torch.testing.assert_close(z.mean(-1), torch.zeros(1, 6, 9), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(-1, unbiased=False), torch.ones(1, 6, 9), rtol=0, atol=1e-3)

    (row,) = tokens_to_rows(tokens)
    assert row.latent.dtype == np.float16 and row.latent.shape == (54, 16)
    assert (row.grid_rows, row.grid_cols, row.orig_height, row.orig_width) == (6, 9, 96, 144)
    back = rows_to_tokens([row], patch=PATCH, max_tokens=MAX_TOKENS)
    torch.testing.assert_close(back.grids[0], z, rtol=0, atol=4e-3)  # float16 steps at |z| < 8
    assert back.extras == tokens.extras and back.patch_nums == tokens.patch_nums == (8,)
    assert back.image_size == (96, 144) and back.padded_size == tokens.padded_size

    recon = tok.decode(tokens)
    recon16 = tok.decode(back)
    assert recon.shape == recon16.shape == (1, 3, 96, 144)
    assert torch.isfinite(recon).all()
    assert (recon16 - recon).abs().max() < 0.1
    # The budget resize is the one the reference does (bicubic, antialiased, no clamp).
    expected = naflex.resize_to_token_budget(x[0], PATCH, MAX_TOKENS)
    alone = tok.encode(expected[None], patch_nums=(8,))
    torch.testing.assert_close(alone.grids[0], z, rtol=0, atol=1e-6)


def test_thin_image_fits_budget_where_reference_overshoots():
    tok = load_tokenizer("vitok", None, "Bw32d1h2-Bw32d1h2/1x16x8", max_tokens=64)
    tokens = tok.encode(torch.zeros(1, 3, 1, 5000))  # the reference: 1 x 141 patches, crash
    assert tokens.num_tokens <= 64 and tokens.scale_shapes == [(1, 64)]
    strict = load_tokenizer("vitok", None, "Bw32d1h2-Bw32d1h2/1x16x8", max_tokens=64, budget_resize=False)
    with pytest.raises(ValueError, match="over the budget of 64"):
        strict.encode(torch.zeros(1, 3, 200, 200))


def test_bf16_latents_close_to_fp32(fx, meta, tok, images):
    bf16 = load_tokenizer("vitok", str(fx), meta["config"]["ae_kwargs"], max_tokens=MAX_TOKENS, precision="bf16")
    a, b = tok.encode(images[0][None]).grids[0], bf16.encode(images[0][None]).grids[0]
    assert b.dtype == torch.float32 and (a - b).abs().max() < 0.25


# ------------------------------------------------------------------------ config and checkpoints
def test_variant_grammar_matches_reference(meta):
    for variant, kwargs in meta["decode_variant"].items():
        assert decode_variant(variant) == kwargs, variant
    assert decode_variant("w256_d3_h4_m2.0/8x4")["mlp_factor"] == 2.0
    with pytest.raises(ValueError, match="unknown ViTok base"):
        decode_variant("X/16x32")
    with pytest.raises(ValueError, match="disagrees"):
        resolve_config({"variant": "B/16x32", "channels_per_token": 64})


def test_variant_and_kwargs_build_the_same_tokenizer(fx, meta, tok):
    by_variant = load_tokenizer("vitok", str(fx), {"variant": meta["config"]["variant"], "attn_backend": "sdpa"},
                                max_tokens=MAX_TOKENS)
    expected = {k: v for k, v in meta["config"]["ae_kwargs"].items() if k != "attn_backend"}
    assert {k: by_variant.config[k] for k in ARCH_KEYS} == expected
    assert by_variant.fingerprint() == tok.fingerprint()
    with pytest.raises(ValueError, match="unknown config keys"):
        load_tokenizer("vitok", None, {"variant": "B/16x32", "widht": 3})


def test_released_default_config_is_the_350m_f16x64_model():
    cfg = resolve_config(None)
    assert cfg == {**cfg, **decode_variant("Ld4-Ld24/1x16x64")}
    with torch.device("meta"):
        model = ViTokAE(**{k: cfg[k] for k in ARCH_KEYS if "stride" not in k})
    assert len(model.state_dict()) == 232
    n_enc = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("decoder", "to_pixels")))
    assert round(n_enc / 1e6, 2) == 51.26


def test_checkpoint_of_another_size_names_the_keys(fx):
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("vitok", str(fx), "Bw64d3h2-Bw128d2h2/1x16x16")
    msg = str(err.value)
    assert "unexpected" not in msg
    assert "missing (8): encoder_blocks.2.attn.norm_k.weight" in msg
    assert "encoder_blocks.0.attn.qkv_proj.weight: checkpoint (384, 128) vs model (192, 64)" in msg


def test_checkpoint_of_another_family_names_the_keys(tmp_path, meta):
    path = tmp_path / "vqvae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "quantize.embedding.weight": torch.zeros(16, 8)},
              str(path))
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("vitok", str(path), meta["config"]["ae_kwargs"])
    msg = str(err.value)
    assert "unexpected (2): encoder.conv_in.weight, quantize.embedding.weight" in msg
    assert "missing (40): decoder_blocks.0" in msg and "another family" in msg
    with pytest.raises(CheckpointError, match="lacks"):
        load_tokenizer("vitok", str(tmp_path), meta["config"]["ae_kwargs"])


def test_encoder_only_tokenizer_loads_encoder_file_and_refuses_decode(fx, meta, images):
    config = {**meta["config"]["ae_kwargs"], "decoder": False}
    enc = load_tokenizer("vitok", str(fx / "encoder.safetensors"), config, max_tokens=MAX_TOKENS)
    tokens = enc.encode(images[0][None])
    assert tokens.scale_shapes == [(6, 8)]
    with pytest.raises(RuntimeError, match="without its decoder"):
        enc.decode(tokens)
