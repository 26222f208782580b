"""Reconstruction losses (L1/L2/Charbonnier, SSIM, optional VGG perceptual) and a hinge patch GAN.

Images are (B, 3, H, W) in [-1, 1]. SSIM uses an 11x11 Gaussian window (sigma 1.5) on [0, 1]
images with the usual constants, so `1 - ssim` is a loss and `ssim` an evaluation metric.
The perceptual loss only exists when the user hands us VGG16 weights (torchvision's `features.N`
key names); nothing is ever downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHARBONNIER_EPS = 1e-3
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2


def pixel_loss(kind: str, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    diff = recon - target
    if kind == "l1":
        return diff.abs().mean()
    if kind == "l2":
        return diff.square().mean()
    if kind == "charbonnier":
        return torch.sqrt(diff.square() + CHARBONNIER_EPS ** 2).mean()
    raise ValueError(f"unknown pixel loss {kind!r} (l1, l2, charbonnier)")


def _gaussian_window(size: int = 11, sigma: float = 1.5, channels: int = 3, device=None) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float32, device=device) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0),
         reduce: bool = True) -> torch.Tensor:
    """Mean SSIM of two image batches (per image when reduce=False)."""
    lo, hi = value_range
    a = (a.float() - lo) / (hi - lo)
    b = (b.float() - lo) / (hi - lo)
    c = a.shape[1]
    size = min(11, a.shape[-1], a.shape[-2])
    w = _gaussian_window(size, 1.5, c, a.device)
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    var_a = F.conv2d(a * a, w, groups=c) - mu_a ** 2
    var_b = F.conv2d(b * b, w, groups=c) - mu_b ** 2
    cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return s.mean() if reduce else s.flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Per-image PSNR in dB of images in `value_range` (compared on the [0, 1] scale)."""
    lo, hi = value_range
    mse = (((a.float() - b.float()) / (hi - lo)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


# ------------------------------------------------------------------ perceptual (user-supplied VGG16)
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)   # up to relu5_1's block
VGG16_TAPS = (3, 8, 15, 22, 29)   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision indices)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGPerceptual(nn.Module):
    """Mean squared distance of channel-normalised VGG16 features (an LPIPS without learned weights)."""

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in VGG16_LAYOUT + ("M", 512, 512, 512):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers[:VGG16_TAPS[-1] + 1])
        from pipeline.tokenizers.checkpoints import load_into, read_state_dict
        sd = {k: v for k, v in read_state_dict(weights_path).items() if k.startswith("features.")}
        load_into(self, sd, source=weights_path)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.cat([recon, target]).add(1).div(2).sub(self.mean).div(self.std)
        loss = x.new_zeros(())
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                a, b = F.normalize(x, dim=1).chunk(2)
                loss = loss + (a - b).square().sum(1).mean()
        return loss


# ------------------------------------------------------------------ patch discriminator (hinge)
class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming's NLayerDiscriminator shape, GroupNorm instead of BatchNorm so
    DDP needs no synchronised statistics): one real/fake logit per receptive-field patch."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.GroupNorm(32 if c_out % 32 == 0 else 1, c_out),
                     nn.LeakyReLU(0.2)]
            c = c_out
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()
