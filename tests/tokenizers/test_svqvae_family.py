"""The svqvae/flexvar family beyond the fixture: FlexVAR's layout and scales, released configs,
checkpoints of the wrong family or size, and a round trip on real photos."""

import json

import numpy as np
import pytest
import torch

from pipeline.tokenizers import MultiScaleTokens, PreprocessConfig, load_tokenizer
from pipeline.tokenizers.checkpoints import CheckpointError
from pipeline.tokenizers.llamagen_blocks import LlamaGenVQConfig, LlamaGenVQModel
from pipeline.tokenizers.svqvae import FLEXVAR_DEFAULTS, SVQVAE_DEFAULTS, build_model

FLEX_SMALL = {"ch": 32, "codebook_size": 512}


@pytest.fixture(scope="module")
def svq_dir(fixtures_dir):
    return fixtures_dir / "svqvae"


@pytest.fixture(scope="module")
def svq_config(svq_dir):
    cfg = json.loads((svq_dir / "config.json").read_text())
    return {**cfg["model_args"], "ch": cfg["encoder_kwargs"]["ch"]}


@pytest.fixture(scope="module")
def flex_checkpoint(tmp_path_factory):
    """A FlexVAE.pth-shaped file: torch.save({"model": state_dict}) of a small FlexVAR model."""
    path = tmp_path_factory.mktemp("flexvar") / "FlexVAE.pth"
    torch.save({"model": build_model({**FLEXVAR_DEFAULTS, **FLEX_SMALL}, seed=7).state_dict(), "iter": 3}, path)
    return path


def state_dict_stats(defaults):
    sd = LlamaGenVQModel(LlamaGenVQConfig(**defaults)).state_dict()
    return len(sd), sum(t.numel() for t in sd.values()), sd


def test_released_layouts():
    n, numel, sd = state_dict_stats(SVQVAE_DEFAULTS)
    assert (n, numel) == (300, 68_106_955)
    assert sd["quantize.codebook_used"].shape == (65536,)
    assert sd["decoder.conv_blocks.1.res.0.nin_shortcut.weight"].shape == (256, 512, 1, 1)
    n, numel, sd = state_dict_stats(FLEXVAR_DEFAULTS)
    assert n == 344 and round(numel / 1e6, 1) == 72.1
    assert sd["quant_conv.weight"].shape == (32, 256, 1, 1)
    assert sd["quantize.embedding.weight"].shape == (8912, 32)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="codebook_sizes"):
        load_tokenizer("flexvar", None, {"codebook_sizes": 10})
    with pytest.raises(ValueError, match="tile"):
        load_tokenizer("svqvae", None, {"ch": 32}, tile=3)


def test_flexvar_loads_its_checkpoint_and_makes_square_scales(flex_checkpoint):
    tok = load_tokenizer("flexvar", str(flex_checkpoint), FLEX_SMALL, patch_nums=(1, 2, 3, 4, 8))
    expected = build_model({**FLEXVAR_DEFAULTS, **FLEX_SMALL}, seed=7).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in tok.model.state_dict().items())
    assert (tok.downsample, tok.vocab_size, tok.input_range) == (16, 512, (-1.0, 1.0))

    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = tok.encode(x)
    assert tokens.scale_shapes == [(1, 1), (2, 2), (3, 3), (4, 4), (8, 8)]
    assert tokens.padded_size == (128, 128)
    # FlexVAR's rule: area-resize the continuous latent to n x n, quantise each scale alone.
    with torch.inference_mode():
        latent = tok.model.encode_latent(x)
        for n, grid in zip((1, 2, 3, 4), tokens.grids):
            small = torch.nn.functional.interpolate(latent, size=(n, n), mode="area")
            assert torch.equal(tok.model.quantize(small).indices, grid)
    img = tok.decode(tokens, upto=4)
    assert img.shape == (2, 3, 64, 64) and img.min() >= -1 and img.max() <= 1
    assert tok.decode(tokens).shape == (2, 3, 128, 128)


def test_flexvar_bf16_runs_codebook_search_in_fp32(flex_checkpoint):
    tok = load_tokenizer("flexvar", str(flex_checkpoint), FLEX_SMALL, precision="bf16", patch_nums=(4,))
    tokens = tok.encode(torch.zeros(1, 3, 64, 64))
    assert tokens.grids[0].dtype == torch.int64 and tokens.scale_shapes == [(4, 4)]


def test_other_family_checkpoint_names_the_keys(flex_checkpoint, svq_config, tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("svqvae", str(flex_checkpoint), svq_config)
    msg = str(err.value)
    assert "missing (24)" in msg and "encoder.conv_blocks.3.attn.0.q.weight" in msg
    assert "unexpected (68)" in msg and "decoder.conv_blocks.4.res.0.conv1.weight" in msg
    assert "decoder.conv_in.weight: checkpoint (128, 256, 3, 3) vs model (128, 32, 3, 3)" in msg
    assert "512x32 codebook, 5 encoder levels (f16)" in msg and "'flexvar'" in msg

    taming = tmp_path / "vae.safetensors"
    from safetensors.torch import save_file
    save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(32, 32, 3, 3),
               "quantize.embedding.weight": torch.zeros(4096, 32)}, str(taming))
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("svqvae", str(taming), svq_config)
    msg = str(err.value)
    assert "missing (299)" in msg and "unexpected (1): encoder.down.0.block.0.conv1.weight" in msg
    assert "quantize.embedding.weight: checkpoint (4096, 32) vs model (1024, 8)" in msg and "taming" in msg


def test_other_size_checkpoint_names_the_shapes(svq_dir, svq_config):
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("svqvae", str(svq_dir / "model.safetensors"), {**svq_config, "ch": 64})
    msg = str(err.value)
    assert "wrong shape (292)" in msg and "missing" not in msg and "unexpected" not in msg
    assert "decoder.conv_blocks.0.attn.0.k.weight: checkpoint (128, 128, 1, 1) vs model (256, 256, 1, 1)" in msg
    assert "1024x8 codebook, 4 encoder levels (f8) and ch=32" in msg


@pytest.mark.parametrize("photo,max_side", [("astronaut", 192), ("coffee", 240)])
def test_round_trip_on_a_photo(svq_dir, svq_config, photo, max_side):
    import skimage.data

    tok = load_tokenizer("svqvae", str(svq_dir / "model.safetensors"), svq_config, tile_size=128,
                         overlap=64, patch_nums=(4, 16),
                         preprocess=PreprocessConfig(mode="native", max_side=max_side))
    x = tok.preprocess([getattr(skimage.data, photo)()])
    assert x.min() >= 0 and x.max() <= 1 and max(x.shape[-2:]) == max_side
    tokens = tok.encode(x)
    assert torch.equal(tok.encode(x).flat(), tokens.flat())  # deterministic

    # What the job stores (uint16 rows + scale shapes + sizes) decodes to the same image.
    row = tokens.flat()[0].numpy().astype(np.uint16)
    stored = MultiScaleTokens.from_flat(torch.from_numpy(row.astype(np.int64))[None], tokens.scale_shapes,
                                        tokens.patch_nums, image_size=tokens.image_size,
                                        padded_size=tokens.padded_size)
    img = tok.decode(stored)
    assert torch.equal(img, tok.decode(tokens))
    assert img.shape == x.shape and 0 <= img.min() and img.max() <= 1
    # No black border on any side (the reference's top/left rows and columns would be exactly 0).
    for edge in (img[..., 0, :], img[..., -1, :], img[..., :, 0], img[..., :, -1]):
        assert edge.amax(dim=1).min() > 0.05
    assert tok.decode(stored, upto=1).shape[-2:] == tuple(round(s / 4) for s in x.shape[-2:])


def test_bad_tile_settings_are_clear_errors(svq_dir, svq_config):
    tok = load_tokenizer("svqvae", str(svq_dir / "model.safetensors"), svq_config, tile_size=128, overlap=64)
    x = torch.zeros(1, 3, 200, 300)
    with pytest.raises(ValueError, match="multiples of the downsampling factor 8"):
        tok.encode(x, tile_size=100, overlap=50)
    with pytest.raises(ValueError, match="tile_size > overlap"):
        tok.encode(x, tile_size=64, overlap=64)
    with pytest.raises(ValueError, match="at least 16px"):  # abutting Hann windows leave zero weight
        tok.encode(x, tile_size=128, overlap=8)
