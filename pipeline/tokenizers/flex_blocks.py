"""MagViT-style conv encoder/decoder of GSQ (HelmholtzAI-FZJ/flex_gen `FlexTokenizer`).

Module names reproduce the reference state dict, misspellings included: the encoder's last layers
are `encoder.fianl_layers.{0,2}`, the decoder's `decoder.final_layers.{0,2}`; a res block is a
Sequential `net` (0 GroupNorm, 1 SiLU, 2 conv, 3 GroupNorm, 4 SiLU, 5 Dropout2d, 6 conv) plus a 1x1
`skip` conv when the channel count changes; every other layer sits in one flat `blocks` list, so
its position is part of its key (`decoder.blocks.5.conv`, `decoder.blocks.6.gamma`).

The decoder conditions its adaptive norms on whole-latent statistics (per-channel mean and the
unbiased standard deviation over H*W), so decoding is not tile-local.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ResNetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.GroupNorm(32, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad),
            nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout2d(dropout),
            nn.Conv2d(out_channels, out_channels, kernel_size, padding=pad))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.skip(x)


class Downsample(nn.Module):
    """3x3 stride-2 conv with symmetric padding 1 (not the asymmetric LDM pad)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """DCR order: out(c, block*y + i, block*x + j) = in((i*block + j) * C + c, y, x)."""
    b, c, h, w = x.shape
    c_out = c // (block * block)
    x = x.reshape(b, block, block, c_out, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c_out, h * block, w * block)


class DepthToSpaceUpsample(nn.Module):
    """3x3 conv C -> 4C, then depth-to-space x2 (the reference's DepthToSpace2DWithConv)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv(x), 2)


class AdaptiveGroupNorm2D(nn.Module):
    """GroupNorm(32, no affine, eps 1e-6) of x, scaled by gamma(std of q) and shifted by beta(mean of q).

    q is the decoder input latent; its per-channel std over H*W uses torch's default unbiased (N-1)
    variance plus eps before the square root, as the reference computes it (its comment says otherwise).
    """

    def __init__(self, cond_channels: int, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(32, channels, eps=eps, affine=False)
        self.gamma = nn.Linear(cond_channels, channels)
        self.beta = nn.Linear(cond_channels, channels)
        self.eps = eps

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = q.reshape(q.shape[0], q.shape[1], -1)
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt()).view(b, c, 1, 1)
        shift = self.beta(flat.mean(dim=-1)).view(b, c, 1, 1)
        return scale * self.gn(x) + shift


class Encoder(nn.Module):
    """conv_in; per channel multiplier: a channel-change res block if needed, layer_configs[i] res
    blocks, a stride-2 conv except after the last; layer_configs[-1] middle res blocks;
    GroupNorm/SiLU/1x1 conv to the embedding dimension."""

    def __init__(self, *, input_channels: int, hidden_channels: int, embedding_dim: int,
                 channel_multipliers: Sequence[int], layer_configs: Sequence[int], kernel_size: int = 3,
                 input_kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        _check_layer_configs("encoder", layer_configs, channel_multipliers)
        self.conv_in = nn.Conv2d(input_channels, hidden_channels, input_kernel_size, padding=input_kernel_size // 2)
        self.blocks = nn.ModuleList()
        channels = hidden_channels
        for level, mult in enumerate(channel_multipliers):
            out = mult * hidden_channels
            if out != channels:
                self.blocks.append(ResNetBlock(channels, out, kernel_size, dropout))
            channels = out
            self.blocks.extend(ResNetBlock(channels, channels, kernel_size, dropout) for _ in range(layer_configs[level]))
            if level < len(channel_multipliers) - 1:
                self.blocks.append(Downsample(channels))
        self.blocks.extend(ResNetBlock(channels, channels, kernel_size, dropout) for _ in range(layer_configs[-1]))
        self.fianl_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, embedding_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        return self.fianl_layers(h)


class Decoder(nn.Module):
    """conv_in (3x3) to the widest level; layer_configs[-1] middle res blocks; adaptive norm; then
    per reversed channel multiplier (j = 0 is the lowest resolution): a channel-change res block if
    needed, layer_configs[j] res blocks and, except at full resolution, depth-to-space x2 followed
    by an adaptive norm; GroupNorm/SiLU/conv to RGB. Output is not clamped."""

    def __init__(self, *, output_channels: int, hidden_channels: int, embedding_dim: int,
                 channel_multipliers: Sequence[int], layer_configs: Sequence[int], kernel_size: int = 3,
                 output_kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        _check_layer_configs("decoder", layer_configs, channel_multipliers)
        channels = channel_multipliers[-1] * hidden_channels
        self.conv_in = nn.Conv2d(embedding_dim, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResNetBlock(channels, channels, kernel_size, dropout)
                                    for _ in range(layer_configs[-1]))
        self.blocks.append(AdaptiveGroupNorm2D(embedding_dim, channels))
        multipliers = list(reversed(channel_multipliers))
        for j, mult in enumerate(multipliers):
            out = mult * hidden_channels
            if out != channels:
                self.blocks.append(ResNetBlock(channels, out, kernel_size, dropout))
            channels = out
            self.blocks.extend(ResNetBlock(channels, channels, kernel_size, dropout) for _ in range(layer_configs[j]))
            if j < len(multipliers) - 1:
                self.blocks.append(DepthToSpaceUpsample(channels))
                self.blocks.append(AdaptiveGroupNorm2D(embedding_dim, channels))
        self.final_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(),
                                          nn.Conv2d(channels, output_channels, output_kernel_size,
                                                    padding=output_kernel_size // 2))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.shape[-2] * q.shape[-1] < 2:
            raise ValueError("the GSQ decoder needs a latent of at least 2 positions (it normalises by "
                             "the latent's unbiased standard deviation)")
        h = self.conv_in(q)
        for block in self.blocks:
            h = block(h, q) if isinstance(block, AdaptiveGroupNorm2D) else block(h)
        return self.final_layers(h)


def _check_layer_configs(part: str, layer_configs: Sequence[int], multipliers: Sequence[int]) -> None:
    if len(layer_configs) != len(multipliers) + 1:
        raise ValueError(f"{part}_layer_configs needs one entry per channel multiplier plus one for the "
                         f"middle blocks ({len(multipliers) + 1}), got {list(layer_configs)}")
