"""ViTok-v2's autoencoder: a ViT encoder and decoder over NaFlex tokens with 2-D RoPE.

Module and parameter names follow the released `encoder.safetensors` / `decoder.safetensors`
(Na-VAE/vitok-release `AE`), so those files load unchanged:

  patch_embed -> encoder_blocks.* -> to_code -> parameter-free LayerNorm  = z (B, N, c)
  decoder_embed -> decoder_blocks.* -> to_pixels                          = patches (B, N, 3p²)

Blocks are pre-norm with attention and SwiGLU in parallel, scaled by a per-channel LayerScale.
Attention is PyTorch SDPA. With `masked=True` (the reference's "sdpa" backend) a token only
attends to valid tokens, so an image's latents do not depend on how much padding shares its
batch; `masked=False` reproduces the reference "flash" backend's semantics, where padding tokens
take part in attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROPE_THETA = 10000.0
NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 whatever the activation dtype (as the reference)."""

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (self.dim,), weight=self.weight.float(), eps=self.eps)
        return y.type_as(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class SwiGLU(nn.Module):
    """fc1 produces (value, gate) in that order; hidden width rounded to a multiple of 16."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = swiglu_hidden(hidden)
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)


def swiglu_hidden(hidden: int) -> int:
    return ((hidden + 8) // 16) * 16


# ------------------------------------------------------------------------ 2-D RoPE
def rope_2d(row_idx: torch.Tensor, col_idx: torch.Tensor, head_dim: int,
            theta: float = ROPE_THETA) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, N, head_dim/2) for integer patch coordinates, in float32.

    Half of the rotated pairs follow the row, half the column, each with head_dim/4 frequencies
    theta^(-4k/head_dim). Positions are not normalised, so larger grids extrapolate.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    axis_dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, axis_dim, 2, device=row_idx.device).float() / axis_dim))
    with torch.autocast(row_idx.device.type, enabled=False):
        angles = torch.cat([row_idx.float()[..., None] * inv_freq, col_idx.float()[..., None] * inv_freq], -1)
        return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, N, H, hd) in x's dtype."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    cos, sin = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)
    return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(3)


class Attention(nn.Module):
    """Fused qkv (rows q | k | v, head-major), per-head QK-RMSNorm before RoPE, SDPA, out_proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.norm_q = RMSNorm(self.head_dim)
        self.norm_k = RMSNorm(self.head_dim)
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv_proj(x).reshape(b, n, 3, self.heads, self.head_dim).unbind(2)
        q, k = apply_rope(self.norm_q(q), *rope), apply_rope(self.norm_k(k), *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_factor: float, use_layer_scale: bool,
                 layer_scale_init: float) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.ffn = SwiGLU(dim, int(dim * mlp_factor))
        self.layer_scale = LayerScale(dim, layer_scale_init) if use_layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        return x + self.layer_scale(self.attn(h, rope, attn_mask) + self.ffn(h))


def attention_mask(patch_mask: torch.Tensor) -> torch.Tensor:
    """(B, N) valid-token mask -> (B, 1, N, N) boolean SDPA mask: valid queries see valid keys.

    Padding queries additionally see themselves: a fully masked row is NaN on some SDPA kernels,
    and a NaN padding row would poison valid rows in the next layer (0 * NaN). Valid rows are
    unaffected by this diagonal.
    """
    pm = patch_mask.bool()
    pair = pm[:, :, None] & pm[:, None, :]
    eye = torch.eye(pm.shape[1], dtype=torch.bool, device=pm.device)
    return (pair | eye)[:, None]


class ViTokAE(nn.Module):
    """Encoder and/or decoder; a side that is switched off holds no parameters."""

    def __init__(self, *, pixels_per_token: int, channels_per_token: int, encoder_width: int,
                 decoder_width: int, encoder_depth: int, decoder_depth: int, encoder_heads: int,
                 decoder_heads: int, mlp_factor: float, use_layer_scale: bool = True,
                 layer_scale_init: float = 1e-4, encoder: bool = True, decoder: bool = True,
                 masked: bool = True) -> None:
        super().__init__()
        if not (encoder or decoder):
            raise ValueError("a ViTok model needs the encoder, the decoder or both")
        self.has_encoder, self.has_decoder, self.masked = encoder, decoder, masked
        self.encoder_head_dim = encoder_width // encoder_heads
        self.decoder_head_dim = decoder_width // decoder_heads
        block = lambda w, h: Block(w, h, mlp_factor, use_layer_scale, layer_scale_init)  # noqa: E731
        if encoder:
            self.patch_embed = nn.Linear(pixels_per_token, encoder_width)
            self.encoder_blocks = nn.ModuleList(block(encoder_width, encoder_heads) for _ in range(encoder_depth))
            self.to_code = nn.Linear(encoder_width, channels_per_token)
        if decoder:
            self.decoder_embed = nn.Linear(channels_per_token, decoder_width)
            self.decoder_blocks = nn.ModuleList(block(decoder_width, decoder_heads) for _ in range(decoder_depth))
            self.to_pixels = nn.Linear(decoder_width, pixels_per_token)

    def _mask(self, patch_mask: torch.Tensor | None) -> torch.Tensor | None:
        if not self.masked or patch_mask is None or bool(patch_mask.all()):
            return None  # nothing to hide: SDPA can pick its fastest kernel
        return attention_mask(patch_mask)

    def encode(self, patches: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor,
               patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """patches (B, N, 3p²) -> z (B, N, c), each token normalised to mean 0 / variance 1."""
        if not self.has_encoder:
            raise RuntimeError("this ViTok model was built without its encoder (encoder=False)")
        x = self.patch_embed(patches)
        rope, mask = rope_2d(row_idx, col_idx, self.encoder_head_dim), self._mask(patch_mask)
        for blk in self.encoder_blocks:
            x = blk(x, rope, mask)
        z = self.to_code(x)
        return F.layer_norm(z.float(), (z.shape[-1],), eps=NORM_EPS).type_as(z)

    def decode(self, z: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor,
               patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, N, c) -> patches (B, N, 3p²) in the encoder's input range (not clamped)."""
        if not self.has_decoder:
            raise RuntimeError("this ViTok model was built without its decoder (decoder=False)")
        x = self.decoder_embed(z)
        rope, mask = rope_2d(row_idx, col_idx, self.decoder_head_dim), self._mask(patch_mask)
        for blk in self.decoder_blocks:
            x = blk(x, rope, mask)
        return self.to_pixels(x)
