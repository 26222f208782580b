"""The VAR transformer (next-scale prediction), readable top to bottom.

Our own implementation of FoundationVision/VAR's `models/var.py` + `models/basic_var.py` with the
official parameter and buffer names, so the released `var_d*.pth` state dicts load strictly.
Facts: shared/specs/var_spec.md section 2. One forward pass predicts every scale at once:

    position 0          class embedding + pos_start            -> predicts the 1x1 scale
    positions of k+1    word_embed(f_hat after scale k, seen at the size of scale k+1)
    every position      + lvl_embed(scale) + pos_1LC(position)
    blocks              AdaLN-modulated attention + MLP, block-causal mask across scales
    head                AdaLN, Linear(C -> V)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

RELEASE_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
MAX_ATTN_TEMPERATURE_LOG = math.log(100.0)


@dataclass
class VARConfig:
    """The reference `VAR(...)` constructor arguments, plus what VAR reads from its VQVAE."""

    depth: int = 16
    embed_dim: int | None = None          # None: 64 * depth (build_vae_var)
    num_heads: int | None = None          # None: depth
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float | None = None   # None: 0.1 * depth / 24
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = True             # build_vae_var's default (the VAR class says False)
    patch_nums: tuple[int, ...] = RELEASE_PATCH_NUMS
    flash_if_available: bool = True       # accepted for compatibility; the maths is the same
    fused_if_available: bool = True
    vocab_size: int = 4096                # from the tokenizer (VQVAE vocab)
    cvae: int = 32                        # from the tokenizer (latent channels)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.embed_dim is None:
            self.embed_dim = 64 * self.depth
        if self.num_heads is None:
            self.num_heads = self.depth
        if self.drop_path_rate is None:
            self.drop_path_rate = 0.1 * self.depth / 24
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_nums"] = list(self.patch_nums)
        d.pop("extra")
        return d


def scale_begin_ends(patch_nums: tuple[int, ...]) -> list[tuple[int, int]]:
    """(begin, end) of each scale in the flattened sequence."""
    out, start = [], 0
    for p in patch_nums:
        out.append((start, start + p * p))
        start += p * p
    return out


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(keep).div_(keep)


class SelfAttention(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        C, H = cfg.embed_dim, cfg.num_heads
        self.num_heads, self.head_dim = H, C // H
        self.attn_l2_norm = cfg.attn_l2_norm
        if cfg.attn_l2_norm:
            # Cosine attention with a learned per-head temperature (init 4, clamped at 100).
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        # Keys have no bias; the zero vector is a (persistent) buffer in the official checkpoints.
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)
        self.attn_drop = cfg.attn_drop_rate
        self.proj_drop = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        self.caching = False
        self.cached_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, head_dim)
        if self.attn_l2_norm:
            temperature = self.scale_mul_1H11.clamp_max(MAX_ATTN_TEMPERATURE_LOG).exp()
            q = F.normalize(q, dim=-1).mul(temperature)
            k = F.normalize(k, dim=-1)
        if self.caching:
            # Sampling runs one scale at a time; earlier scales' keys/values are reused.
            if self.cached_kv is not None:
                k = torch.cat((self.cached_kv[0], k), dim=2)
                v = torch.cat((self.cached_kv[1], v), dim=2)
            self.cached_kv = (k, v)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class FFN(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        hidden = round(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class SharedAdaLin(nn.Linear):
    """The d36 variant: one AdaLN projection for all blocks, output viewed as (B, 1, 6, C)."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, 6, self.out_features // 6)


class AdaLNSelfAttn(nn.Module):
    def __init__(self, cfg: VARConfig, drop_path: float) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.C, self.shared_aln = C, cfg.shared_aln
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(cfg)
        self.drop_path = DropPath(drop_path)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        # cond_BD is the class embedding (B, C), or the shared projection (B, 1, 6, C).
        if self.shared_aln:
            mods = (self.ada_gss + cond_BD).unbind(2)
        else:
            mods = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods  # the official chunk order
        h = self.ln_wo_grad(x).mul(scale1 + 1).add(shift1)
        x = x + self.drop_path(self.attn(h, attn_bias).mul(gamma1))
        h = self.ln_wo_grad(x).mul(scale2 + 1).add(shift2)
        return x + self.drop_path(self.ffn(h).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale + 1).add(shift)


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.config = cfg
        C, L = cfg.embed_dim, cfg.seq_len
        self.C, self.L, self.num_classes = C, L, cfg.num_classes
        self.patch_nums = cfg.patch_nums
        self.begin_ends = scale_begin_ends(cfg.patch_nums)
        self.cond_drop_rate = cfg.cond_drop_rate
        init_std = math.sqrt(1 / C / 3)

        self.word_embed = nn.Linear(cfg.cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last row = null class (CFG)
        nn.init.trunc_normal_(self.class_emb.weight, std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        nn.init.trunc_normal_(self.pos_start, std=init_std)
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        nn.init.trunc_normal_(self.pos_1LC, std=init_std)
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=init_std)

        self.shared_ada_lin = (nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln
                               else nn.Identity())
        n = cfg.depth
        drop_paths = [cfg.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.blocks = nn.ModuleList(AdaLNSelfAttn(cfg, dp) for dp in drop_paths)
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = nn.Linear(C, cfg.vocab_size)

        # Scale index of every position, and the block-causal mask: a query sees every key of its
        # own scale and of all coarser scales. Both are persistent (they are in the checkpoints).
        level = torch.cat([torch.full((p * p,), i) for i, p in enumerate(cfg.patch_nums)])
        self.register_buffer("lvl_1L", level.view(1, L).contiguous())
        mask = torch.where(level.view(L, 1) >= level.view(1, L), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, L, L).contiguous())

    # ---------------------------------------------------------------- teacher forcing
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) float32 for every position, given the previous scales' features.

        Unlike the reference, class dropout is applied only in train() mode.
        """
        B = x_BLCv_wo_first_l.shape[0]
        if x_BLCv_wo_first_l.shape[1] != self.L - 1:
            raise ValueError(f"expected {self.L - 1} input positions for patch_nums {self.patch_nums}, "
                             f"got {tuple(x_BLCv_wo_first_l.shape)}")
        if self.training and self.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        # Embeddings in float32 whatever the autocast dtype (as the reference).
        with torch.autocast(x_BLCv_wo_first_l.device.type, enabled=False):
            cond_BD = self.class_emb(label_B)
            sos = cond_BD.unsqueeze(1) + self.pos_start
            x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
            x = x + self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC
        cond = self.shared_ada_lin(cond_BD)
        dtype = _autocast_dtype(x)
        x, cond = x.to(dtype), cond.to(dtype)
        for block in self.blocks:
            x = block(x, cond, self.attn_bias_for_masking)
        return self.logits(x, cond_BD)

    def logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x.float(), cond_BD).float()).float()

    # ---------------------------------------------------------------- inference helpers
    def level_pos(self) -> torch.Tensor:
        """lvl_embed + pos_1LC for every position: (1, L, C)."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    @contextlib.contextmanager
    def kv_cache(self) -> Iterator[None]:
        """Blocks keep their keys/values while the sampler feeds one scale at a time."""
        for b in self.blocks:
            b.attn.caching, b.attn.cached_kv = True, None
        try:
            yield
        finally:
            for b in self.blocks:
                b.attn.caching, b.attn.cached_kv = False, None

    # ---------------------------------------------------------------- training from scratch
    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                     init_head: float = 0.02, init_std: float = -1) -> None:
        """The reference's `init_weights` (spec 2.8)."""
        if init_std < 0:
            init_std = math.sqrt(1 / self.C / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        if init_head >= 0:
            self.head.weight.mul_(init_head)
            self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * len(self.blocks)))
            block.ffn.fc2.weight.div_(math.sqrt(2 * len(self.blocks)))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                w = block.ada_lin[-1].weight
                w[2 * self.C:].mul_(init_adaln)
                w[:2 * self.C].mul_(init_adaln_gamma)
                block.ada_lin[-1].bias.zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    # The dtype matmuls produce in the current autocast region (what the blocks will run in).
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
