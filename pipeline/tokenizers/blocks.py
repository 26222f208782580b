"""Conv building blocks of the LDM/taming-style VQ-GAN autoencoder as VAR ships it.

Module and parameter names follow the reference state dict (`encoder.down.0.block.1.conv2`, the
fused `attn.qkv` 1x1 conv, ...) so official checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions; q, k, v from one fused 1x1 conv (in that order)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.scale = channels ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k).mul_(self.scale), dim=2)  # (b, query, key)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class SeparateQKVAttnBlock(nn.Module):
    """The same attention with q, k, v as three 1x1 convs (the LDM and LlamaGen layouts: keys
    `norm`, `q`, `k`, `v`, `proj_out`), used by the GQ and SVQVAE/FlexVAR families. Through
    torch's fused scaled-dot-product attention, whose memory stays linear in the positions (a
    large image's latent has tens of thousands)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hidden = self.norm(x)
        q, k, v = (conv(hidden).reshape(b, 1, c, h * w).transpose(2, 3) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c), scale c^-0.5
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample2x(nn.Module):
    """Zero-pad right and bottom by one pixel, then a stride-2 3x3 conv (asymmetric on purpose)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Encoder(nn.Module):
    """conv_in, one level per ch_mult entry (res blocks, attention only at the last level,
    downsample between levels), mid (res, attn, res), norm/SiLU/conv_out to z channels."""

    def __init__(self, *, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_channels: int = 3, z_channels: int = 32, double_z: bool = False,
                 using_sa: bool = True, using_mid_sa: bool = True) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            block_in, block_out = ch * in_mult[level], ch * mult
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if level == len(ch_mult) - 1 and using_sa:
                    stage.attn.append(AttnBlock(block_in))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample2x(block_in)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != len(self.down) - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Mirror of the encoder with num_res_blocks + 1 blocks per level; `up[0]` is full resolution
    and the levels run from the last index down to 0."""

    def __init__(self, *, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_channels: int = 3, z_channels: int = 32,
                 using_sa: bool = True, using_mid_sa: bool = True) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        stages: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if level == len(ch_mult) - 1 and using_sa:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample2x(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
