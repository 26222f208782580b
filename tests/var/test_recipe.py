"""The reference recipe: lr/wd schedule, parameter groups, losses, checkpoint round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.var import load_var
from pipeline.var.checkpointing import load_checkpoint, save_checkpoint
from pipeline.var.model import scale_begin_ends
from pipeline.var.recipe import (apply_schedule, depth_recipe, lr_factor, param_group_names, param_groups,
                                 per_scale_stats, token_loss, weight_decay_at)
from pipeline.var.train_config import TrainConfig

from conftest import VAR_DIR

RECIPES = json.loads((VAR_DIR / "lr_schedule.json").read_text())["recipes"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_lr_and_wd_schedule_match_official(name):
    r = RECIPES[name]
    assert depth_recipe(int(name[1:])).tblr == r["tblr"]
    cfg = TrainConfig(tokens="x", depth=int(name[1:])).resolved()   # batch and epochs from the depth alone
    assert cfg.batch_size == r["bs"] and cfg.epochs == r["ep"]
    assert cfg.lr == pytest.approx(r["peak_lr"]) and cfg.wpe == r["wpe"] and cfg.twde == r["twde_effective"]
    assert cfg.warmup_ratio * r["max_it"] == pytest.approx(r["wp_it_arg"])
    for s in r["samples"]:
        lr = r["peak_lr"] * lr_factor(s["g_it"], r["wp_it_arg"], r["max_it"], 0.005, r["wpe"])
        assert lr == pytest.approx(s["lr"], rel=1e-9), s
        assert weight_decay_at(s["g_it"], r["max_it"], r["twd"], r["twde_effective"]) == pytest.approx(s["wd_decay_group"])


def test_param_groups_match_official(var_fixture):
    model = load_var(var_fixture["checkpoint"], config=var_fixture["constructor"])
    decay, no_decay = param_group_names(model)
    official = var_fixture["config"]["official_param_groups"]
    assert decay == official["decay"]
    assert sorted(no_decay) == sorted(official["no_decay"])
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1.0)
    lr, wd = apply_schedule(opt, 0, peak_lr=1e-3, warmup_it=10, max_it=100, wp0=0.005, wpe=0.1, twd=0.05, twde=0.08)
    assert [g["weight_decay"] for g in opt.param_groups] == [wd, 0.0] and wd == pytest.approx(0.05)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-6)


def test_losses_match_official(var_fixture):
    a = var_fixture["arrays"]
    tf = var_fixture["config"]["teacher_forced"]
    logits, target = torch.from_numpy(a["logits_BLV"]), torch.from_numpy(a["gt_idx_BL"])
    assert token_loss(logits, target).item() == pytest.approx(tf["train_loss_ls0.0"], rel=1e-5)
    assert token_loss(logits, target, 0.1).item() == pytest.approx(tf["train_loss_ls0.1"], rel=1e-5)
    ce, acc = per_scale_stats(logits, target, scale_begin_ends(tuple(var_fixture["constructor"]["patch_nums"])))
    np.testing.assert_allclose(ce, tf["per_scale_mean_ce"], rtol=1e-5)
    assert all(0 <= x <= 100 for x in acc)


def test_checkpoint_round_trip_keeps_optimizer_state(tmp_path):
    model = load_var(None, config={"depth": 1, "embed_dim": 64, "num_heads": 1, "vocab_size": 16, "cvae": 4,
                                   "patch_nums": (1, 2)})
    model.train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    x, label, target = torch.randn(2, 4, 4), torch.tensor([1, 2]), torch.randint(0, 16, (2, 5))
    for _ in range(2):
        opt.zero_grad()
        token_loss(model(label, x), target).backward()
        opt.step()
    save_checkpoint(str(tmp_path), model, opt, {"step": 2}, [{"step": 1, "loss": 3.0}])
    restored = load_checkpoint(str(tmp_path))  # optimizer.pt loads with weights_only=True
    assert restored.step == 2 and restored.history == [{"step": 1, "loss": 3.0}]
    fresh = load_var(restored.model, config=model.config)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    opt2 = torch.optim.AdamW(param_groups(fresh, 0.05), lr=1e-3, betas=(0.9, 0.95))
    opt2.load_state_dict(restored.optimizer)
    for p_old, p_new in zip(model.parameters(), fresh.parameters()):
        s_old, s_new = opt.state[p_old], opt2.state[p_new]
        assert torch.equal(s_old["exp_avg"], s_new["exp_avg"]) and float(s_new["step"]) == 2
