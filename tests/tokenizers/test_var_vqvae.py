"""VAR VQ-VAE against the official implementation's outputs (tests/fixtures/var, seeded weights)."""

import json

import numpy as np
import pytest
import torch

from pipeline.tokenizers import MultiScaleTokens, PreprocessConfig, load_tokenizer
from pipeline.tokenizers.checkpoints import CheckpointError
from pipeline.tokenizers.var_vqvae import RELEASED_CONFIG, VQVAE

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


@pytest.fixture(scope="module")
def var_dir(fixtures_dir):
    return fixtures_dir / "var"


@pytest.fixture(scope="module")
def small_config(var_dir):
    return json.loads((var_dir / "vqvae_small_config.json").read_text())["constructor"]


@pytest.fixture(scope="module")
def tok(var_dir, small_config):
    return load_tokenizer("var-vqvae", checkpoint=str(var_dir / "vqvae_small.safetensors"), config=small_config)


@pytest.fixture(scope="module")
def inputs(var_dir):
    return torch.from_numpy(np.load(var_dir / "inputs.npy"))


@pytest.fixture(scope="module")
def expected(var_dir):
    return dict(np.load(var_dir / "vqvae_expected.npz"))


@pytest.fixture(scope="module")
def tokens(tok, inputs):
    return tok.encode(inputs)


def test_preprocess_reproduces_reference_inputs_bit_for_bit(tok, inputs):
    import skimage.data as data

    x = tok.preprocess([data.astronaut(), data.coffee(), data.chelsea()])
    assert x.dtype == torch.float32 and torch.equal(x, inputs)


def test_encoder_latent_matches_reference(tok, inputs, expected):
    f = tok.encode_latent(inputs)
    assert f.shape == (3, 32, 16, 16)
    assert (f - torch.from_numpy(expected["f"])).abs().max().item() < 2e-4


def test_token_ids_identical_at_every_scale(tokens, var_dir, expected):
    assert tokens.patch_nums == PATCH_NUMS
    assert tokens.scale_shapes == [(p, p) for p in PATCH_NUMS]
    ref = json.loads((var_dir / "expected_idx.json").read_text())["idx"]
    for image, per_scale in enumerate(ref):
        for k, ids in enumerate(per_scale):
            assert tokens.grids[k][image].flatten().tolist() == ids, f"image {image} scale {k}"
    assert np.array_equal(tokens.flat().numpy(), expected["idx_BL"])


def test_fhat_and_reconstruction_within_tolerance(tok, tokens, expected, var_dir):
    fhat = tok.indices_to_fhat(tokens.grids)
    assert (fhat - torch.from_numpy(expected["fhat_last"])).abs().max().item() < 1e-4
    # decode the *expected* ids so decoder errors are isolated from encoder errors
    ref_tokens = MultiScaleTokens.from_flat(torch.from_numpy(expected["idx_BL"]), [(p, p) for p in PATCH_NUMS],
                                            PATCH_NUMS)
    recon = tok.decode(ref_tokens)
    assert (recon - torch.from_numpy(np.load(var_dir / "expected_recon.npy"))).abs().max().item() < 5e-4


def test_var_teacher_forcing_input(tok, tokens, var_dir):
    ref = np.load(var_dir / "var_expected.npz")["x_BLCv_wo_first_l"]
    x = tok.to_var_input(tokens)
    assert x.shape == (3, 679, 32)
    assert (x[:2] - torch.from_numpy(ref)).abs().max().item() < 1e-4


def test_partial_decode_uses_first_scales(tok, tokens):
    full = tok.decode(tokens)
    assert torch.equal(full, tok.decode(tokens, upto=len(PATCH_NUMS)))
    coarse = tok.decode(tokens, upto=2)
    assert coarse.shape == full.shape and not torch.allclose(coarse, full)
    with pytest.raises(ValueError, match="upto"):
        tok.decode(tokens, upto=0)


def test_released_state_dict_layout(var_dir):
    shapes = json.loads((var_dir / "release_state_dict_shapes.json").read_text())
    release = shapes["vae_ch160v4096z32"]["keys"]
    model = VQVAE({**RELEASED_CONFIG})
    ours = {k: [list(t.shape), str(t.dtype).replace("torch.", "")] for k, t in model.state_dict().items()}
    assert len(ours) == 324
    assert ours == {k: [list(v[0]), v[1]] for k, v in release.items()}
    assert sum(p.numel() for p in model.parameters()) == 108_948_355


def test_wrong_size_checkpoint_names_the_keys(var_dir):
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("var-vqvae", checkpoint=str(var_dir / "vqvae_small.safetensors"))  # released config
    text = str(err.value)
    assert "wrong shape (310)" in text and "decoder.conv_in.bias: checkpoint (128,) vs model (640,)" in text


def test_missing_and_unexpected_keys_are_listed(tmp_path, tok, small_config):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tok.model.state_dict().items() if not k.startswith("quant_conv.")}
    sd["discriminator.weight"] = torch.zeros(2)
    path = tmp_path / "other.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("var-vqvae", checkpoint=str(path), config=small_config)
    text = str(err.value)
    assert "missing (2): quant_conv.bias, quant_conv.weight" in text
    assert "unexpected (1): discriminator.weight" in text


def test_pth_container_round_trip(tmp_path, tok, small_config, inputs, tokens):
    path = tmp_path / "vae.pth"
    torch.save({"model": tok.model.state_dict(), "epoch": 3}, path)
    again = load_tokenizer("var-vqvae", checkpoint=str(path), config=small_config)
    assert again.fingerprint() == tok.fingerprint()
    assert torch.equal(again.encode(inputs[:1]).flat(), tokens.flat()[:1])


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        load_tokenizer("var-vqvae", config={"chh": 32})


def test_any_image_size_and_aspect(tok):
    x = torch.rand(2, 3, 100, 170) * 2 - 1  # not multiples of 16
    toks = tok.encode(x)
    assert toks.padded_size == (112, 176) and toks.image_size == (100, 170)
    assert toks.scale_shapes[-1] == (7, 11) and toks.scale_shapes[0] == (1, 1)
    assert all(g.shape[0] == 2 for g in toks.grids)
    assert tok.decode(toks).shape == (2, 3, 100, 170)


def test_single_tile_equals_whole_image_encode(tok, inputs):
    whole = tok.encode(inputs[:1])
    tiled = tok.encode(inputs[:1], tile_size=256, overlap=64)
    assert torch.equal(whole.flat(), tiled.flat())


def test_tiled_encode_of_a_large_image(tok):
    x = torch.rand(1, 3, 200, 300) * 2 - 1
    toks = tok.encode(x, tile_size=128, overlap=32)
    # 200 -> ceil(104/96)*96+32 = 224, 300 -> ceil(268/96)*96+32 = 320
    assert toks.padded_size == (224, 320)
    assert toks.scale_shapes[-1] == (14, 20)
    assert tok.decode(toks).shape == (1, 3, 200, 300)
    # a tile size alone takes a quarter-tile overlap; an explicit 0 on several tiles is refused
    assert torch.equal(tok.encode(x, tile_size=128).flat(), toks.flat())
    with pytest.raises(ValueError, match="weight"):
        tok.encode(x, tile_size=128, overlap=0)


def test_bf16_precision_is_part_of_the_fingerprint(var_dir, small_config, inputs, tok):
    bf = load_tokenizer("var-vqvae", checkpoint=str(var_dir / "vqvae_small.safetensors"), config=small_config,
                        precision="bf16")
    assert bf.fingerprint() != tok.fingerprint()
    a, b = bf.encode(inputs[:1]), bf.encode(inputs[:1])
    assert torch.equal(a.flat(), b.flat())  # deterministic
    assert a.grids[0].dtype == torch.int64
    # the coarsest scales see heavily averaged latents and survive bf16 convs
    assert torch.equal(a.grids[0], tok.encode(inputs[:1]).grids[0])


def test_fingerprint_tracks_weights_config_and_preprocessing(small_config, tok):
    a = load_tokenizer("var-vqvae", config=small_config)
    b = load_tokenizer("var-vqvae", config=small_config)
    assert a.fingerprint() == b.fingerprint() != tok.fingerprint()
    c = load_tokenizer("var-vqvae", config=small_config, preprocess={"mode": "resize", "size": 256})
    assert c.fingerprint() != a.fingerprint()
    d = load_tokenizer("var-vqvae", config={**small_config, "vocab_size": 128})
    assert d.fingerprint() != a.fingerprint()


def test_preprocess_policy_parameter(tok):
    img = (np.arange(300 * 500 * 3) % 251).astype(np.uint8).reshape(300, 500, 3)
    assert tok.preprocess([img]).shape == (1, 3, 256, 256)
    native = tok.preprocess([img], PreprocessConfig(mode="native", max_side=250))
    assert native.shape == (1, 3, 150, 250)
    assert native.min() >= -1 and native.max() <= 1
