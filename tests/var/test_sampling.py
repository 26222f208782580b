"""Sampling: greedy tokens and f_hat of the official sampler, top-k/top-p masks, seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.var import load_var
from pipeline.var.sampling import image_grid, sample, top_k_top_p_mask


@pytest.fixture(scope="module")
def model(var_fixture, fixture_tokenizer):
    return load_var(var_fixture["checkpoint"], config=var_fixture["constructor"], tokenizer=fixture_tokenizer)


def test_greedy_cfg_sampling_matches_official(model, var_fixture):
    a = var_fixture["arrays"]
    g = var_fixture["config"]["greedy_ar"]
    out = sample(model, 2, torch.from_numpy(a["ar_label_B"]), cfg=g["cfg"], top_k=g["top_k"], top_p=g["top_p"],
                 seed=g["g_seed"], decode=False)
    flat = out.flat().numpy()
    assert flat.shape == a["ar_idx_BL"].shape
    mismatch = np.argwhere(flat != a["ar_idx_BL"])
    assert mismatch.size == 0, f"first differing token (image, position): {mismatch[0].tolist()}"
    assert (out.fhat - torch.from_numpy(a["ar_fhat"])).abs().max().item() <= 1e-4
    assert [tuple(g.shape[1:]) for g in out.indices] == [(p, p) for p in model.patch_nums]


@pytest.mark.parametrize("combo", range(5))
def test_top_k_top_p_masks_match_official(combo, var_fixture):
    a = var_fixture["arrays"]
    top_k, top_p = a["topkp_combos"][combo]
    removed = top_k_top_p_mask(torch.from_numpy(a["topkp_logits"]), int(top_k), float(top_p))
    assert np.array_equal(removed.numpy(), a["topkp_removed"][combo])


@pytest.fixture(scope="module")
def tiny(small_tokenizer):
    """A random depth-1 VAR on the 4-scale fixture tokenizer (64 px images): fast to sample."""
    return load_var(None, config={"depth": 1, "embed_dim": 64, "num_heads": 1}, tokenizer=small_tokenizer, seed=1,
                    init={"init_head": 1.0, "init_adaln_gamma": 0.5})  # peaked logits


def test_seeded_sampling_is_reproducible_and_decodes(tiny):
    model = tiny
    kwargs = dict(cfg=1.5, top_k=20, top_p=0.9, seed=7)
    a = sample(model, 2, [1, 2], decode=True, **kwargs)
    b = sample(model, 2, [1, 2], decode=False, **kwargs)
    c = sample(model, 2, [1, 2], decode=False, **{**kwargs, "seed": 8})
    assert torch.equal(a.flat(), b.flat())
    assert not torch.equal(a.flat(), c.flat())
    assert a.images.shape == (2, 3, 64, 64) and 0 <= a.images.min() and a.images.max() <= 1
    grid = image_grid(a.images)
    assert grid.size == (2 * 64 + 3 * 2, 64 + 2 * 2)


def test_temperature_and_label_handling(tiny):
    model = tiny
    cold = sample(model, 2, 5, cfg=0.0, top_k=0, top_p=0.0, temperature=1e-5, seed=0, decode=False)
    greedy = sample(model, 2, 5, cfg=0.0, top_k=1, top_p=0.0, seed=1, decode=False)
    assert torch.equal(cold.flat(), greedy.flat())          # T -> 0 is argmax
    assert cold.labels.tolist() == [5, 5]
    drawn = sample(model, 3, None, top_k=1, seed=0, decode=False)
    assert drawn.labels.shape == (3,) and drawn.labels.max() < 1000
    with pytest.raises(ValueError, match="labels"):
        sample(model, 2, [1, 1001], decode=False)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, 1, [1], temperature=0.0, decode=False)


def test_sampling_a_model_in_train_mode_is_sampling_it_in_eval_mode(small_tokenizer):
    """Dropout and drop path are training-only: a model handed over mid-training samples the
    same images as in eval mode, and is handed back still training."""
    model = load_var(None, config={"depth": 1, "embed_dim": 64, "num_heads": 1, "drop_rate": 0.5,
                                   "drop_path_rate": 0.5}, tokenizer=small_tokenizer, seed=1,
                     init={"init_head": 1.0, "init_adaln_gamma": 0.5})
    model.eval()
    reference = sample(model, 2, [3, 4], cfg=1.5, top_k=20, top_p=0.9, seed=3, decode=False)
    model.train()
    try:
        during = sample(model, 2, [3, 4], cfg=1.5, top_k=20, top_p=0.9, seed=3, decode=False)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(reference.flat(), during.flat())
