"""The LlamaGen-style conv VQ-VAE that SVQVAE and FlexVAR ship (FlexVAR's `models/vq_llama.py`).

Same building blocks as the taming/VAR autoencoder, but laid out under other names, which the
checkpoints use unchanged:
  encoder.conv_blocks.{level}.res.{i} / .attn.{i} / .downsample.conv, encoder.mid.{0,1,2}
  decoder.conv_blocks.{i}: index 0 is the LOWEST resolution (taming's `up.*` is the opposite),
  separate q / k / v 1x1 convs in attention, quantize.embedding.weight (+ the training-only
  quantize.codebook_used buffer), quant_conv / post_quant_conv 1x1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.tokenizers.blocks import Downsample2x, ResnetBlock, Upsample2x, normalize
from pipeline.tokenizers.blocks import SeparateQKVAttnBlock as AttnBlock
from pipeline.tokenizers.quantizers.l2norm import L2NormQuantizer


@dataclass
class LlamaGenVQConfig:
    """The reference's `ModelArgs` fields plus the encoder/decoder base width `ch`."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    z_channels: int = 32
    dropout_p: float = 0.0
    ch: int = 128

    def __post_init__(self) -> None:
        for name in ("encoder_ch_mult", "decoder_ch_mult"):
            mult = list(getattr(self, name))
            if not mult or any(int(m) <= 0 for m in mult):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got {mult}")
            setattr(self, name, [int(m) for m in mult])
        if self.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm with 32 groups), got {self.ch}")
        if self.codebook_size <= 0 or self.codebook_embed_dim <= 0 or self.z_channels <= 0:
            raise ValueError("codebook_size, codebook_embed_dim and z_channels must be positive")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


def _level(block_in: int, block_out: int, n_res: int, with_attn: bool, dropout: float) -> nn.Module:
    level = nn.Module()
    level.res = nn.ModuleList()
    level.attn = nn.ModuleList()
    for _ in range(n_res):
        level.res.append(ResnetBlock(block_in, block_out, dropout))
        block_in = block_out
        if with_attn:
            level.attn.append(AttnBlock(block_out))
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, res in enumerate(level.res):
        h = res(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _mid(channels: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, dropout), AttnBlock(channels),
                          ResnetBlock(channels, channels, dropout)])


class Encoder(nn.Module):
    """conv_in; per level 2 res blocks (attention only in the last level) and a downsample
    between levels; mid (res, attn, res); GN, swish, conv_out to z_channels."""

    def __init__(self, ch: int, ch_mult: list[int], z_channels: int, num_res_blocks: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        in_mult = [1] + list(ch_mult)
        last = len(ch_mult) - 1
        self.conv_blocks = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _level(ch * in_mult[i], ch * mult, num_res_blocks, i == last, dropout)
            if i != last:
                level.downsample = Downsample2x(ch * mult)
            self.conv_blocks.append(level)
        block_in = ch * ch_mult[-1]
        self.mid = _mid(block_in, dropout)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in; mid; levels from the lowest resolution up (index 0 = lowest, with attention),
    3 res blocks each and an upsample after all but the last; GN, swish, conv_out to RGB."""

    def __init__(self, ch: int, ch_mult: list[int], z_channels: int, num_res_blocks: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, dropout)
        self.conv_blocks = nn.ModuleList()
        for i, mult in enumerate(reversed(ch_mult)):
            level = _level(block_in, ch * mult, num_res_blocks + 1, i == 0, dropout)
            block_in = ch * mult
            if i != len(ch_mult) - 1:
                level.upsample = Upsample2x(block_in)
            self.conv_blocks.append(level)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LlamaGenVQModel(nn.Module):
    """Encoder -> quant_conv -> l2-normalised codebook -> post_quant_conv -> decoder."""

    def __init__(self, cfg: LlamaGenVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.ch, cfg.encoder_ch_mult, cfg.z_channels, dropout=cfg.dropout_p)
        self.decoder = Decoder(cfg.ch, cfg.decoder_ch_mult, cfg.z_channels, dropout=cfg.dropout_p)
        self.quantize = L2NormQuantizer(cfg.codebook_size, cfg.codebook_embed_dim,
                                        l2_norm=cfg.codebook_l2_norm, usage_buffer=cfg.codebook_show_usage)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latent (B, codebook_embed_dim, H/ds, W/ds), float32."""
        return self.quant_conv(self.encoder(x)).float()

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> image (B, 3, h*ds, w*ds), unclamped, float32."""
        quantized = self.quantize.lookup(indices)
        return self.decoder(self.post_quant_conv(quantized)).float()
