"""Conformance of the VAR transformer with the official code (fixtures/var) and checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.tokenizers.checkpoints import CheckpointError
from pipeline.var import VAR, load_var, var_config
from pipeline.var.model import scale_begin_ends

from conftest import VAR_DIR


@pytest.fixture(scope="module")
def fixture_var(var_fixture):
    return load_var(var_fixture["checkpoint"], config=var_fixture["constructor"])


def test_teacher_forced_logits_match_official(fixture_var, var_fixture):
    a = var_fixture["arrays"]
    atol = var_fixture["tolerances"]["var_expected.logits_BLV"]["atol"]
    with torch.no_grad():
        logits = fixture_var(torch.from_numpy(a["label_B"]), torch.from_numpy(a["x_BLCv_wo_first_l"]))
    assert logits.shape == (2, 680, 256) and logits.dtype == torch.float32
    err = (logits - torch.from_numpy(a["logits_BLV"])).abs().max().item()
    assert err <= atol, f"logits differ by {err:.3g} (tolerance {atol})"


def test_fixture_model_structure(fixture_var, var_fixture):
    derived = var_fixture["config"]["derived"]
    assert fixture_var.num_params() == derived["n_params"]
    assert len(fixture_var.state_dict()) == derived["n_state_dict_entries"]
    assert [list(be) for be in scale_begin_ends(fixture_var.patch_nums)] == derived["begin_ends"]
    # Block-causal mask: the first token of scale 3 sees scales 0..3 fully and nothing after.
    mask = fixture_var.attn_bias_for_masking[0, 0]
    b3, e3 = derived["begin_ends"][3]
    assert torch.all(mask[b3, :e3] == 0) and torch.all(mask[b3, e3:] == -torch.inf)


def test_class_dropout_only_in_train_mode(fixture_var, var_fixture):
    a = var_fixture["arrays"]
    label = torch.from_numpy(a["label_B"])
    x = torch.from_numpy(a["x_BLCv_wo_first_l"])
    model = load_var(var_fixture["checkpoint"], config={**var_fixture["constructor"], "cond_drop_rate": 1.0})
    with torch.no_grad():
        eval_logits = model(label, x)
        model.train()
        dropped = model(label, x)                                   # every label -> null class
        null = model.eval()(torch.full_like(label, 1000), x)
    assert torch.allclose(eval_logits, fixture_var(label, x), atol=1e-6)
    # In train mode the drop path of the fixture (p=0.008) is active; compare loosely there.
    assert not torch.allclose(dropped[0], eval_logits[0], atol=1e-3)
    assert (dropped - null).abs().max().item() < 0.5 * (eval_logits[0] - null[0]).abs().max().item()


@pytest.mark.parametrize("name", ["var_d16", "var_d20", "var_d24", "var_d30", "var_d36"])
def test_release_state_dict_layout(name):
    """Exact key names, order, shapes, dtypes and counts of the released checkpoints (meta device)."""
    spec = json.loads((VAR_DIR / "release_state_dict_shapes.json").read_text())[name]
    depth = int(name[5:])
    cfg = {"depth": depth}
    if depth == 36:
        cfg.update(shared_aln=True, patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32))
    with torch.device("meta"):
        model = VAR(var_config(cfg))
    sd = model.state_dict()
    assert list(sd) == list(spec["keys"])
    for key, (shape, dtype) in spec["keys"].items():
        assert list(sd[key].shape) == shape and str(sd[key].dtype) == f"torch.{dtype}", key
    assert model.num_params() == spec["n_params"]
    assert sum(b.numel() for b in model.buffers()) == spec["n_buffer_elems"]


def test_official_pth_loads_and_config_is_inferred(tmp_path, fixture_var, var_fixture):
    sd = {k: v.clone() for k, v in fixture_var.state_dict().items()}
    path = tmp_path / "var_d2.pth"
    torch.save(sd, path)  # the released files are plain state dicts
    model = load_var(path)  # no config: depth, width, heads, classes from the keys
    assert model.config.depth == 2 and model.config.embed_dim == 128 and model.config.num_heads == 2
    a = var_fixture["arrays"]
    with torch.no_grad():
        assert torch.equal(model(torch.from_numpy(a["label_B"]), torch.from_numpy(a["x_BLCv_wo_first_l"])),
                           fixture_var(torch.from_numpy(a["label_B"]), torch.from_numpy(a["x_BLCv_wo_first_l"])))


def test_wrong_shape_checkpoint_fails_clearly(tmp_path, fixture_var, var_fixture):
    path = tmp_path / "var_small.pth"
    torch.save(fixture_var.state_dict(), path)
    wrong = {**var_fixture["constructor"], "embed_dim": 64}  # official layout, other width
    with pytest.raises(CheckpointError) as err:
        load_var(path, config=wrong)
    text = str(err.value)
    assert "wrong shape" in text and "mat_qkv.weight: checkpoint (384, 128) vs model (192, 64)" in text and "embed_dim 128 (checkpoint) vs 64 (config)" in text
    with pytest.raises(CheckpointError, match="depth 2 \\(checkpoint\\) vs 3"):
        load_var(path, config={**var_fixture["constructor"], "depth": 3})


def test_tokenizer_supplies_vocab_and_channels(fixture_tokenizer, var_fixture):
    model = load_var(var_fixture["checkpoint"], config=var_fixture["constructor"], tokenizer=fixture_tokenizer)
    assert model.config.vocab_size == 256 and model.config.cvae == 32
    with pytest.raises(ValueError, match="vocab_size"):
        load_var(None, config={**var_fixture["constructor"], "vocab_size": 4096}, tokenizer=fixture_tokenizer)
    with pytest.raises(ValueError, match="unknown config keys"):
        load_var(None, config={"depht": 2})


def test_to_var_input_matches_official(fixture_tokenizer, var_fixture):
    from pipeline.tokenizers import MultiScaleTokens

    a = var_fixture["arrays"]
    pn = tuple(var_fixture["constructor"]["patch_nums"])
    tokens = MultiScaleTokens.from_flat(torch.from_numpy(a["gt_idx_BL"]), [(p, p) for p in pn], pn)
    x = fixture_tokenizer.to_var_input(tokens)
    err = (x - torch.from_numpy(a["x_BLCv_wo_first_l"])).abs().max().item()
    assert err <= 1e-4


def test_random_init_is_seeded_and_follows_reference_init():
    a = load_var(None, config={"depth": 2, "embed_dim": 64, "num_heads": 2, "vocab_size": 32, "cvae": 8,
                               "patch_nums": (1, 2)}, seed=3)
    b = load_var(None, config={"depth": 2, "embed_dim": 64, "num_heads": 2, "vocab_size": 32, "cvae": 8,
                               "patch_nums": (1, 2)}, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.count_nonzero(a.head.bias) == 0
    assert torch.allclose(a.blocks[0].attn.scale_mul_1H11, torch.tensor(4.0).log())
    gamma = a.blocks[0].ada_lin[-1].weight[:2 * 64]
    assert gamma.abs().max() < 1e-3  # init_adaln_gamma 1e-5 x trunc-normal
