"""GSQ (flex_gen FlexTokenizer, vq/gvq) against the reference's outputs (tests/fixtures/gsq, see its README),
plus the codebook usage / perplexity metrics."""

import json
import math
import pickle

import numpy as np
import pytest
import torch

from pipeline.tokenizers import MultiScaleTokens, PreprocessConfig, load_tokenizer
from pipeline.tokenizers.checkpoints import CheckpointError, read_state_dict
from pipeline.tokenizers.metrics import (code_counts, codebook_usage, perplexity, perplexity_from_counts,
                                         usage_from_counts)
from pipeline.tokenizers.quantizers.spherical import SphericalQuantizer

QUANTIZERS = ["vq_G1", "gvq_G1", "gvq_G2", "gvq_G4", "gvq_G2_nol2"]


@pytest.fixture(scope="module")
def gsq_dir(fixtures_dir):
    return fixtures_dir / "gsq"


@pytest.fixture(scope="module")
def meta(gsq_dir):
    return json.loads((gsq_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def kwargs(meta):
    return meta["model"]["constructor_kwargs"]


@pytest.fixture(scope="module")
def tok(gsq_dir, kwargs):
    return load_tokenizer("gsq", checkpoint=str(gsq_dir / "model.safetensors"), config=kwargs)


@pytest.fixture(scope="module")
def model_input(gsq_dir):
    return torch.from_numpy(np.load(gsq_dir / "model_input.npy"))


@pytest.fixture(scope="module")
def tokens(tok, model_input):
    return tok.encode(model_input)


def load(gsq_dir, name):
    return np.load(gsq_dir / f"{name}.npy")


def quantizer_from_fixture(gsq_dir, meta, name, chunk_elements=1 << 24):
    qcfg = meta["quant"][name]["quantizer_config"]
    q = SphericalQuantizer(qcfg["num_embed"], qcfg["embed_dim"], qcfg.get("num_group"),
                           norm_p=2 if qcfg["use_l2_norm"] else None, chunk_elements=chunk_elements)
    q.codebook.weight.data = torch.from_numpy(load(gsq_dir, f"codebook_{name}"))
    return q.requires_grad_(False)


# ------------------------------------------------------------------ quantisers alone
@pytest.mark.parametrize("name", QUANTIZERS)
def test_quantizer_codes_identical_to_reference(gsq_dir, meta, name):
    latent = torch.from_numpy(load(gsq_dir, "latent"))  # [0, :, 0, 0] is the all-zero tie case
    out = quantizer_from_fixture(gsq_dir, meta, name)(latent)
    codes = load(gsq_dir, f"codes_{name}")
    assert tuple(out.indices.shape) == codes.shape  # vq (B, H, W); gvq (B, H, W, G)
    assert np.array_equal(out.indices.numpy(), codes)
    # decoding uses the raw (un-normalised) rows; the reference's straight-through value is within ulps
    assert np.array_equal(out.quantized.numpy(), load(gsq_dir, f"lookup_{name}"))
    assert np.abs(out.quantized.numpy() - load(gsq_dir, f"quantized_{name}")).max() < 1e-6


@pytest.mark.parametrize("name", ["vq_G1", "gvq_G4"])
def test_chunked_distances_give_the_same_codes(gsq_dir, meta, name):
    latent = torch.from_numpy(load(gsq_dir, "latent"))
    tiny_blocks = quantizer_from_fixture(gsq_dir, meta, name, chunk_elements=100)  # 100 codebook rows x 1 latent row
    assert np.array_equal(tiny_blocks(latent).indices.numpy(), load(gsq_dir, f"codes_{name}"))


def test_codes_requantise_to_themselves(gsq_dir, meta):
    q = quantizer_from_fixture(gsq_dir, meta, "gvq_G2")
    codes = torch.randint(0, 512, (2, 3, 4, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(q(q.lookup(codes)).indices, codes)


def test_lookup_rejects_codes_of_the_wrong_shape_or_range(gsq_dir, meta):
    q = quantizer_from_fixture(gsq_dir, meta, "gvq_G4")
    with pytest.raises(ValueError, match="G=4"):
        q.lookup(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        q.lookup(torch.full((1, 2, 2, 4), 512))


# ------------------------------------------------------------------ full model
def test_encoder_latent_matches_reference(tok, model_input, gsq_dir):
    latent = tok.encode_latent(model_input)
    assert latent.shape == (1, 16, 8, 8)
    assert (latent - torch.from_numpy(load(gsq_dir, "model_latent"))).abs().max().item() < 1e-4


def test_model_codes_identical_grouped_layout(tok, tokens, gsq_dir):
    assert tok.vocab_size == 512 and tok.groups == 4 and tok.downsample == 8
    assert len(tokens.grids) == 1 and tokens.grids[0].shape == (1, 8, 8, 4)
    assert np.array_equal(tokens.grids[0].numpy(), load(gsq_dir, "model_codes"))
    assert tokens.scale_shapes == [(8, 8)] and tokens.flat().shape == (1, 64, 4)


def test_reconstruction_from_codes_matches_reference(tok, tokens, gsq_dir):
    recon = tok.decode(tokens)
    assert recon.shape == (1, 3, 64, 64)
    assert (recon - torch.from_numpy(load(gsq_dir, "model_recon_from_codes"))).abs().max().item() < 2e-4
    straight_through = tok.decode_latent(torch.from_numpy(load(gsq_dir, "model_quantized")))
    assert (straight_through - torch.from_numpy(load(gsq_dir, "model_recon"))).abs().max().item() < 2e-4


def test_released_checkpoint_pt_layout_loads(tok, gsq_dir, kwargs, tmp_path):
    # checkpoint.pt = {model_state_dict, config: pickled kwargs}; only the tensors are read
    sd = read_state_dict(gsq_dir / "model.safetensors")
    path = tmp_path / "checkpoint.pt"
    torch.save({"model_state_dict": sd, "config": pickle.dumps(kwargs)}, path)
    assert load_tokenizer("gsq", checkpoint=str(path), config=kwargs).fingerprint() == tok.fingerprint()


def test_checkpoint_of_another_family_is_refused_naming_keys(fixtures_dir, kwargs):
    with pytest.raises(CheckpointError) as err:
        load_tokenizer("gsq", checkpoint=str(fixtures_dir / "gq" / "model.safetensors"), config=kwargs)
    text = str(err.value)
    assert "missing" in text and "decoder.blocks.0.net.0.weight" in text
    assert "unexpected" in text and "decoder.mid.block_1.conv1.weight" in text


def test_checkpoint_of_another_size_is_refused_naming_shapes(gsq_dir, kwargs):
    other = json.loads(json.dumps(kwargs))
    other["quantizer_config"]["num_group"] = 2  # D16-G2 codebook rows are 8 wide, the checkpoint's 4
    with pytest.raises(CheckpointError, match=r"quantizers\.codebook\.weight: checkpoint \(512, 4\) vs model \(512, 8\)"):
        load_tokenizer("gsq", checkpoint=str(gsq_dir / "model.safetensors"), config=other)


def test_round_trip_on_a_photo(tok):
    import skimage.data as data

    x = tok.preprocess([data.coffee()], PreprocessConfig(mode="native", max_side=60))  # 400x600 -> 40x60
    assert x.shape == (1, 3, 40, 60)
    tokens = tok.encode(x)
    codes = tokens.grids[0]
    assert codes.shape == (1, 5, 8, 4) and tokens.padded_size == (40, 64) and tokens.image_size == (40, 60)
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.vocab_size
    again = MultiScaleTokens.from_flat(tokens.flat(), tokens.scale_shapes, tokens.patch_nums,
                                       image_size=tokens.image_size)
    assert torch.equal(again.grids[0], codes)
    image = tok.decode(again)
    assert image.shape == (1, 3, 40, 60) and torch.isfinite(image).all()
    assert torch.equal(tok.encode(torch.cat([x, x.flip(-2)])).grids[0][:1], codes)
    usage = codebook_usage(codes, tok.vocab_size, tok.groups)
    assert 0 < usage["pooled"] <= 40 * 4 / 512


def test_ungrouped_vq_config_gives_plain_grids(meta):
    kwargs = dict(meta["model"]["constructor_kwargs"], quantizer_config=meta["quant"]["vq_G1"]["quantizer_config"])
    tok = load_tokenizer("gsq", config=kwargs)
    tokens = tok.encode(torch.zeros(1, 3, 32, 32).uniform_(-1, 1))
    assert tok.groups == 1 and tokens.grids[0].shape == (1, 4, 4)
    assert tok.decode(tokens).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("change,message", [
    ({"hidden_chanels": 32}, "unknown config keys"),
    ({"mid_block_attn": True}, "not supported"),
    ({"quantizer_config": {"quantize_type": "gsq", "embed_dim": 16, "num_embed": 8}}, "not supported"),
    ({"quantizer_config": {"quantize_type": "gvq", "embed_dim": 8, "num_embed": 8}}, "differs from embedding_dim"),
    ({"encoder_layer_configs": [2, 2]}, "one entry per channel multiplier"),
])
def test_bad_configs_fail_clearly(kwargs, change, message):
    with pytest.raises(ValueError, match=message):
        load_tokenizer("gsq", config={**kwargs, **change})


# ------------------------------------------------------------------ codebook metrics
def test_usage_and_perplexity_pooled_and_per_group():
    # 2 positions x G=2: group 0 uses codes {0, 1}, group 1 uses {1, 1}
    codes = torch.tensor([[[[0, 1]], [[1, 1]]]])  # (B=1, h=2, w=1, G=2)
    usage = codebook_usage(codes, vocab=4, groups=2)
    assert usage == {"pooled": 0.5, "per_group": [0.5, 0.25], "product": 0.125}
    ppl = perplexity(codes, vocab=4, groups=2)
    pooled = math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert ppl["pooled"] == pytest.approx(pooled, rel=1e-6)
    assert ppl["per_group"] == pytest.approx([2.0, 1.0], rel=1e-6)
    assert ppl["mean_per_group"] == pytest.approx(1.5, rel=1e-6)


def test_metrics_accept_flat_parquet_rows_and_accumulate_by_counts():
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 16, size=(2, 3, 3, 4)) for _ in range(3)]
    flat = [g.reshape(2, -1) for g in grids]  # (B, L*G), the G codes of a position adjacent
    assert torch.equal(code_counts(flat[0], 16, 4), code_counts(torch.as_tensor(grids[0]), 16, 4))
    total = sum(code_counts(g, 16, 4) for g in grids)
    assert total.sum() == 3 * 2 * 9 * 4
    assert usage_from_counts(total) == codebook_usage(np.concatenate(grids), 16, 4)
    assert perplexity_from_counts(total) == perplexity(np.concatenate(grids), 16, 4)


def test_metrics_reject_out_of_range_codes():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        codebook_usage(torch.tensor([0, 8]), vocab=8)
    with pytest.raises(ValueError, match="groups of 3"):
        perplexity(torch.arange(4), vocab=8, groups=3)
