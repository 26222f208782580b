"""The SGM/LDM conv autoencoder (Stability generative-models `Encoder`/`Decoder`) as GQ ships it.

Differs from VAR's taming variant in `blocks` in three ways that change the state dict:
  * attention follows every res block of each level whose *nominal* resolution (`resolution`
    halved per level, independent of the real input size) is in `attn_resolutions`;
  * there is no mid-block attention (the reference comments it out);
  * attention has separate 1x1 `q`, `k`, `v` convs (not one fused `qkv`).
Res blocks, down/upsampling and the norm are the same modules as in `blocks`.
Key names follow the reference (`encoder.down.3.attn.0.q.weight`, `decoder.up.0.block.2...`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.tokenizers.blocks import Downsample2x, ResnetBlock, Upsample2x, normalize
from pipeline.tokenizers.blocks import SeparateQKVAttnBlock as AttnBlock


class Encoder(nn.Module):
    """conv_in; per level num_res_blocks res blocks (+ attention at the listed nominal resolutions)
    and a downsample except after the last; mid res blocks; norm/SiLU/conv_out to (2x) z channels."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 resolution: int, in_channels: int, z_channels: int, double_z: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        nominal = resolution
        block_in = ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[level], ch * mult
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if nominal in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample2x(block_in)
                nominal //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
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
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in; mid res blocks; levels from the lowest resolution up (`up[0]` is full resolution),
    num_res_blocks + 1 res blocks each (+ attention at listed nominal resolutions), upsample except
    at level 0; norm/SiLU/conv_out. Output is not clamped (the GQ configs set no clamp range)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 resolution: int, out_ch: int, z_channels: int, dropout: float = 0.0,
                 tanh_out: bool = False) -> None:
        super().__init__()
        self.tanh_out = tanh_out
        block_in = ch * ch_mult[-1]
        nominal = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        stages: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if nominal in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample2x(block_in)
                nominal *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h
