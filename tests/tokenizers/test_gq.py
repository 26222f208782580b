"""GQ (Gaussian Quant) against the reference's outputs (tests/fixtures/gq, seeded weights, see its README)."""

import hashlib
import json

import numpy as np
import pytest
import torch

from pipeline.tokenizers import MultiScaleTokens, PreprocessConfig, load_tokenizer
from pipeline.tokenizers.checkpoints import CheckpointError, read_state_dict
from pipeline.tokenizers.quantizers.gaussian import GaussianQuantizer, sobol_prior_codebook

QUANT_CONFIGS = [(256, 16), (256, 8), (256, 4), (65536, 16)]


@pytest.fixture(scope="module")
def gq_dir(fixtures_dir):
    return fixtures_dir / "gq"


@pytest.fixture(scope="module")
def meta(gq_dir):
    return json.loads((gq_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def tok(gq_dir, meta):
    # config exactly as the recorded run lists it (the whole `model` section, run statistics included)
    return load_tokenizer("gq", checkpoint=str(gq_dir / "model.safetensors"), config=meta["model"])


@pytest.fixture(scope="module")
def model_input(gq_dir):
    return torch.from_numpy(np.load(gq_dir / "model_input.npy"))


@pytest.fixture(scope="module")
def tokens(tok, model_input):
    return tok.encode(model_input)


def load(gq_dir, name):
    return np.load(gq_dir / f"{name}.npy")


# ------------------------------------------------------------------ codebook
@pytest.mark.parametrize("n,dim", [(256, 16), (256, 8), (256, 4), (65536, 16), (65536, 8), (65536, 4)])
def test_sobol_codebook_is_the_reference_table(gq_dir, meta, n, dim):
    table = sobol_prior_codebook(n, dim, seed=42)
    assert table.dtype == torch.float32 and table.shape == (n, dim)
    assert np.array_equal(table[:16].numpy(), load(gq_dir, f"codebook_head_{n}_{dim}"))
    digest = hashlib.sha256(table.numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == meta["codebooks"][f"{n}_{dim}"]["sha256_float32_le"]


def test_codebook_depends_on_the_seed():
    assert not torch.equal(sobol_prior_codebook(64, 4, seed=42), sobol_prior_codebook(64, 4, seed=43))


# ------------------------------------------------------------------ quantiser alone
@pytest.mark.parametrize("n,dim", QUANT_CONFIGS)
def test_quantizer_indices_identical_to_reference(gq_dir, n, dim):
    z = torch.from_numpy(load(gq_dir, "z"))  # [mu ; logvar], three logvars outside the clamp range
    q = GaussianQuantizer(n_samples=n, dim=dim, seed=42, beta=1.0, logvar_range=(-30.0, 20.0))
    out = q(z)
    expected = load(gq_dir, f"indices_{n}_{dim}")  # (B, n_g, h, w)
    assert out.indices.shape == (2, 5, 7, 16 // dim)
    assert np.array_equal(out.indices.permute(0, 3, 1, 2).numpy(), expected)
    zhat = load(gq_dir, f"zhat_{n}_{dim}")
    assert np.array_equal(out.quantized.numpy(), zhat)
    assert np.array_equal(q.lookup(out.indices).numpy(), zhat)


def test_contiguous_layout_matches_regularizer2(gq_dir):
    q = GaussianQuantizer(n_samples=256, dim=4, layout="contiguous")
    out = q(torch.from_numpy(load(gq_dir, "z")))
    assert np.array_equal(out.indices.permute(0, 3, 1, 2).numpy(), load(gq_dir, "v2_indices_256_4"))
    assert np.array_equal(out.quantized.numpy(), load(gq_dir, "v2_zhat_256_4"))


def test_selection_is_the_density_ratio_not_nearest_neighbour():
    q = GaussianQuantizer(n_samples=256, dim=4)
    mu = torch.tensor([[0.3, -0.2, 0.1, 0.4]])
    codebook = q.codebook
    nearest = ((codebook - mu) ** 2).sum(1).argmin()
    # A wide posterior: the prior term pulls the choice away from the row nearest to mu.
    index = q.select(mu, torch.full((1, 4), 3.0))
    scores = [(torch.distributions.Normal(mu, 3.0).log_prob(s) - torch.distributions.Normal(0.0, 1.0).log_prob(s)).sum()
              for s in codebook]
    assert int(index) == int(torch.stack(scores).argmax()) != int(nearest)


def test_fast_search_equals_exhaustive_reference_formula():
    torch.manual_seed(0)
    q = GaussianQuantizer(n_samples=4096, dim=8)
    mu = torch.randn(96, 8) * 0.9
    logvar = torch.randn(96, 8) * 0.6 - 1.4
    logvar[:4, 0] = -30.0  # 1/sigma^2 = 1e13: the expanded form cannot be trusted, exact path runs
    logvar[4:8, 1] = 20.0
    std = torch.exp(0.5 * logvar)
    assert torch.equal(q.select(mu, std), q._exact_argmax(mu, std))


def test_codebook_rows_with_tiny_sigma_requantise_to_themselves():
    q = GaussianQuantizer(n_samples=256, dim=4)
    index = torch.arange(0, 256, 7)
    std = torch.full((len(index), 4), float(np.exp(-15.0)))  # logvar -30
    assert torch.equal(q.select(q.codebook[index], std), index)


# ------------------------------------------------------------------ full model
def test_encoder_moments_match_reference(tok, model_input, gq_dir):
    moments = tok.encode_moments(model_input)
    assert moments.shape == (2, 32, 8, 10)
    assert (moments - torch.from_numpy(load(gq_dir, "model_moments"))).abs().max().item() < 1e-4


def test_model_indices_identical_and_single_scale(tok, tokens, gq_dir):
    assert tok.vocab_size == 65536 and tok.groups == 1 and tok.downsample == 8
    assert len(tokens.grids) == 1 and tokens.grids[0].shape == (2, 8, 10)
    assert np.array_equal(tokens.grids[0].numpy(), load(gq_dir, "model_indices")[:, 0])
    assert tokens.scale_shapes == [(8, 10)] and tokens.patch_nums == (10,)
    assert tokens.image_size == (64, 80) and tokens.padded_size == (64, 80)


def test_quantised_latent_and_reconstruction_match_reference(tok, tokens, gq_dir):
    zhat = tok.quantizer.lookup(tokens.grids[0][..., None])
    assert np.array_equal(zhat.numpy(), load(gq_dir, "model_zhat"))
    recon = tok.decode(tokens)
    assert recon.shape == (2, 3, 64, 80)
    assert (recon - torch.from_numpy(load(gq_dir, "model_recon"))).abs().max().item() < 2e-4


def test_lightning_ckpt_loads_encoder_and_decoder_only(tok, gq_dir, meta, tmp_path):
    sd = read_state_dict(gq_dir / "model.safetensors")
    ckpt = {"state_dict": {**sd, "loss.logvar": torch.zeros(()),
                           "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4)},
            "epoch": 3, "global_step": 1200}
    path = tmp_path / "sd3unet_gq_small.ckpt"
    torch.save(ckpt, path)
    loaded = load_tokenizer("gq", checkpoint=str(path), config=meta["model"])
    assert loaded.fingerprint() == tok.fingerprint()  # same weights and config, hence same tokens


def test_checkpoint_of_another_family_is_refused_naming_keys(gq_dir, fixtures_dir, meta):
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("gq", checkpoint=str(fixtures_dir / "gsq" / "model.safetensors"), config=meta["model"])
    text = str(err.value)
    assert "missing (270)" in text and "decoder.mid.block_1.conv1.weight" in text
    assert "unexpected (236)" in text and "decoder.blocks.0.net.0.weight" in text


def test_checkpoint_of_another_size_is_refused_naming_shapes(gq_dir, meta):
    config = json.loads(json.dumps(meta["model"]))
    config["encoder_decoder_kwargs"]["ch"] = 64
    with pytest.raises(CheckpointError, match=r"wrong shape .*decoder\.conv_in\.weight: checkpoint \(128, 16, 3, 3\) vs model \(256, 16, 3, 3\)"):
        load_tokenizer("gq", checkpoint=str(gq_dir / "model.safetensors"), config=config)


def test_checkpoint_without_encoder_weights_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.diffusion.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a GQ checkpoint.*model.diffusion.weight"):
        load_tokenizer("gq", checkpoint=str(path), config={"encoder_decoder_kwargs": {"ch": 32}})


# ------------------------------------------------------------------ real photo
def test_round_trip_on_a_photo(tok):
    import skimage.data as data

    photo = data.chelsea()  # 300 x 451, not a multiple of 8 after resizing
    x = tok.preprocess([photo], PreprocessConfig(mode="native", max_side=90))
    assert x.shape == (1, 3, 60, 90) and x.min() >= -1 and x.max() <= 1
    tokens = tok.encode(x)
    grid = tokens.grids[0]
    assert grid.shape == (1, 8, 12) and tokens.padded_size == (64, 96) and tokens.image_size == (60, 90)
    assert 0 <= int(grid.min()) and int(grid.max()) < tok.vocab_size
    # tokens survive the flat (Parquet) layout and decode to an image of the original size
    again = MultiScaleTokens.from_flat(tokens.flat(), tokens.scale_shapes, tokens.patch_nums,
                                       image_size=tokens.image_size)
    assert torch.equal(again.grids[0], grid)
    image = tok.decode(again)
    assert image.shape == (1, 3, 60, 90) and torch.isfinite(image).all()
    # batching does not change an image's tokens (GroupNorm is per image)
    pair = torch.cat([x, x.flip(-1)])
    assert torch.equal(tok.encode(pair).grids[0][:1], grid)


# ------------------------------------------------------------------ configuration
def test_grouped_config_gives_g_codes_per_position(model_input):
    tok = load_tokenizer("gq", config={"encoder_decoder_kwargs": {"ch": 32, "z_channels": 16},
                                       "regulariser_kwargs": {"group": 4, "n_samples": 256}})
    tokens = tok.encode(model_input[:1, :, :32, :32])
    assert tok.groups == 4 and tokens.grids[0].shape == (1, 4, 4, 4)
    assert tok.decode(tokens).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("config,message", [
    ({"ch": 32}, "belong inside"),
    ({"loss_kwargs": {}}, "unknown config sections"),
    ({"regulariser_kwargs": {"format": "blc"}}, "not supported"),
    ({"regulariser_kwargs": {"group": 5}}, "multiple of the code dimension"),
    ({"encoder_decoder_kwargs": {"chans": 32}}, "unknown config keys"),
])
def test_bad_configs_fail_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        load_tokenizer("gq", config=config)


def test_multi_scale_and_tiling_requests_are_refused(tok, model_input):
    with pytest.raises(ValueError, match="single-scale"):
        tok.encode(model_input, patch_nums=(1, 2, 4))
    with pytest.raises(ValueError, match="does not tile"):
        tok.encode(model_input, tile_size=32, overlap=8)
