"""The reference training recipe as pure functions: parameter groups, lr/wd schedule, loss.

Facts: shared/specs/var_spec.md 2.10 and fixtures/var/lr_schedule.json (official
`lr_wd_annealing` with sche "lin0").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Parameters whose name contains one of these are never weight-decayed (nor are 1-D ones / biases).
NO_DECAY_KEYS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC",
                 "pos_start", "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")


@dataclass(frozen=True)
class DepthRecipe:
    """README training commands, per model depth (global batch, epochs, lr, schedule ends)."""

    batch_size: int
    epochs: int
    tblr: float
    init_adaln_gamma: float
    wpe: float
    twde: float


_RECIPES = {
    16: DepthRecipe(768, 200, 1e-4, 1e-3, 0.1, 0.05),
    20: DepthRecipe(768, 250, 1e-4, 1e-3, 0.1, 0.05),
    24: DepthRecipe(768, 350, 8e-5, 1e-4, 0.01, 0.05),
    30: DepthRecipe(1024, 350, 8e-5, 1e-5, 0.01, 0.08),
    36: DepthRecipe(768, 350, 8e-5, 5e-6, 0.01, 0.08),
}


def depth_recipe(depth: int) -> DepthRecipe:
    """The README recipe of the nearest released depth (small test models take d16's)."""
    return _RECIPES[min(_RECIPES, key=lambda d: (abs(d - depth), d))]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups as the reference builds them; `wd_sc` scales the scheduled weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or name.endswith("bias") or any(k in name for k in NO_DECAY_KEYS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "wd_sc": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "wd_sc": 0.0}]


def param_group_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) parameter names, for checks against the reference grouping."""
    ids = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.0)
    return [ids[id(p)] for p in groups[0]["params"]], [ids[id(p)] for p in groups[1]["params"]]


def lr_factor(it: int, warmup_it: float, max_it: int, wp0: float = 0.005, wpe: float = 0.01) -> float:
    """'lin0': linear warm-up from wp0, flat for the first 5 % after it, then linear down to wpe."""
    wp = round(warmup_it)
    if it < wp:
        return wp0 + (1 - wp0) * it / wp
    passed = (it - wp) / max(1, max_it - 1 - wp)
    if passed < 0.05:
        return 1.0
    return wpe + (1 - wpe) * (1 - passed) / 0.95


def weight_decay_at(it: int, max_it: int, twd: float, twde: float) -> float:
    """Cosine from twd (start) to twde (end) over the whole run."""
    passed = it / max(1, max_it - 1)
    return twde + (twd - twde) * (0.5 + 0.5 * math.cos(math.pi * passed))


def apply_schedule(optimizer: torch.optim.Optimizer, it: int, *, peak_lr: float, warmup_it: float,
                   max_it: int, wp0: float, wpe: float, twd: float, twde: float) -> tuple[float, float]:
    """Set lr and weight decay of every group for iteration `it`; returns (lr, wd)."""
    lr = peak_lr * lr_factor(it, warmup_it, max_it, wp0, wpe)
    wd = weight_decay_at(it, max_it, twd, twde)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_sc", 1.0)
        group["weight_decay"] = wd * group.get("wd_sc", 1.0)
    return lr, wd


def token_loss(logits_BLV: torch.Tensor, target_BL: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy per token x 1/L, summed over L, mean over B (= the mean over all tokens)."""
    B, L, V = logits_BLV.shape
    ce = F.cross_entropy(logits_BLV.reshape(-1, V).float(), target_BL.reshape(-1),
                         label_smoothing=label_smoothing, reduction="none").view(B, L)
    return ce.mul(1.0 / L).sum(dim=-1).mean()


@torch.no_grad()
def per_scale_stats(logits_BLV: torch.Tensor, target_BL: torch.Tensor,
                    begin_ends: list[tuple[int, int]]) -> tuple[list[float], list[float]]:
    """(mean cross-entropy, top-1 accuracy in %) of every scale."""
    V = logits_BLV.shape[-1]
    ce = F.cross_entropy(logits_BLV.reshape(-1, V).float(), target_BL.reshape(-1), reduction="none")
    ce = ce.view_as(target_BL)
    hit = (logits_BLV.argmax(-1) == target_BL).float()
    return ([ce[:, b:e].mean().item() for b, e in begin_ends],
            [100.0 * hit[:, b:e].mean().item() for b, e in begin_ends])
