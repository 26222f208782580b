"""JPEGs decoded on the GPU in batches (nvJPEG through torchvision), with a per-image CPU fallback.

Opt-in: `--gpu-decode`. On a GPU node the CPU's JPEG decode is what caps the job (a 16-core node
decodes ~2-3k ImageNet JPEGs/s with Pillow; an H100 encodes more than that at 256²), so the
decode moves to the device. The work splits in two:

  decode thread   `decode_sample(..., device_jpeg=True)` reads the JPEG *header* only (Pillow is
                  lazy): a baseline or progressive JPEG in YCbCr or greyscale, within the pixel
                  limit, keeps its bytes for the device (`DeviceJpeg`); everything else (PNG, CMYK
                  or YCCK JPEGs, broken headers) is decoded on the CPU exactly as without the option.
  encoder thread  `to_device_tensors` decodes the batch's pending JPEGs in one nvJPEG call,
                  applies the EXIF orientation (nvJPEG ignores EXIF) and the image policy with
                  torch ops on the device. An image nvJPEG refuses is retried alone and then
                  decoded on the CPU with Pillow: a bad image costs itself, never its batch.

Pixels. nvJPEG's IDCT/upsampling and torch's antialiased bicubic resize are not libjpeg + Pillow
LANCZOS: the tensors differ by a few levels from the CPU path's. So the option is part of the job's
token settings (its own fingerprint, like --jpeg-draft), and an actor that cannot decode on its
device refuses to start rather than silently mixing decoders within one job. The CPU fallback is
decided per image by the image's bytes, so the same input still gives the same tokens on the same
GPU type and library versions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.images import (PreprocessConfig, center_crop_box, images_to_tensor, policy_resize,
                                           unit_to_range)

DEVICE_MODES = ("RGB", "L")   # what Pillow reports for YCbCr and greyscale JPEGs
INTERPOLATION = {"lanczos": "bicubic", "bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest",
                 "box": "area"}

# A decoder: JPEG bytes -> (3, H, W) uint8 tensors as stored (no EXIF orientation), or the error.
Decoder = Callable[[Sequence[bytes]], list]


@dataclass
class DeviceJpeg:
    """A JPEG waiting for the device: its bytes and the EXIF orientation to apply after decoding."""

    data: bytes
    orientation: int = 1


def wants_device(image: Image.Image) -> bool:
    """True for JPEGs nvJPEG decodes to RGB (CMYK/YCCK need Pillow's colour conversion)."""
    return image.format in ("JPEG", "MPO") and image.mode in DEVICE_MODES


def nvjpeg_decoder(device: torch.device | str) -> Decoder:
    """torchvision's batched GPU decode; raises ImportError/RuntimeError where there is none."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("--gpu-decode needs a CUDA device in the actor")
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:
        raise RuntimeError(f"--gpu-decode needs torchvision (nvJPEG) in the actor's environment: {e}") from e

    def decode(datas: Sequence[bytes]) -> list:
        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:  # one batched call (torchvision >= 0.19 takes a list)
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except Exception:
            pass
        results: list = []
        for item in encoded:  # find the image(s) that failed the batch
            try:
                results.append(decode_jpeg(item, mode=ImageReadMode.RGB, device=device))
            except Exception as e:
                results.append(e)
        return results

    return decode


def pillow_raw_decoder(device: torch.device | str = "cpu") -> Decoder:
    """The same contract on the CPU (stored orientation, RGB): the reference the device path is
    tested against where no GPU is, and what benchmarks compare nvJPEG with."""

    def decode(datas: Sequence[bytes]) -> list:
        results: list = []
        for d in datas:
            try:
                with Image.open(io.BytesIO(d)) as im:
                    rgb = np.asarray(im.convert("RGB"))
                results.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device))
            except Exception as e:
                results.append(e)
        return results

    return decode


def orient(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """EXIF orientation 1-8 on a (C, H, W) tensor, as `PIL.ImageOps.exif_transpose` does it."""
    if orientation == 2:
        return chw.flip(2)
    if orientation == 3:
        return chw.flip(1).flip(2)
    if orientation == 4:
        return chw.flip(1)
    if orientation == 5:
        return chw.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(chw, -1, dims=(1, 2))
    if orientation == 7:
        return chw.transpose(1, 2).flip(1).flip(2)
    if orientation == 8:
        return torch.rot90(chw, 1, dims=(1, 2))
    return chw


def policy_on_device(chw: torch.Tensor, cfg: PreprocessConfig, input_range: tuple[float, float]) -> torch.Tensor:
    """Upright (3, H, W) uint8 -> (1, 3, H', W') float in `input_range`, on chw's device.

    The boxes are the Pillow path's (`policy_resize`, `center_crop_box`); the result is rounded
    back to 8 bits after the resize (the CPU path resizes 8-bit images), then scaled like
    `uint8_to_tensor`."""
    h, w = int(chw.shape[1]), int(chw.shape[2])
    new_w, new_h = policy_resize(w, h, cfg)
    x = chw.unsqueeze(0).float()
    if (new_w, new_h) != (w, h):
        mode = INTERPOLATION[cfg.resample]
        kwargs = {"antialias": True, "align_corners": False} if mode in ("bicubic", "bilinear") else {}
        x = F.interpolate(x, size=(new_h, new_w), mode=mode, **kwargs).round_().clamp_(0, 255)
    if cfg.mode == "center-crop":
        left, top, right, bottom = center_crop_box(new_w, new_h, cfg.size)
        x = x[:, :, top:bottom, left:right]
    return unit_to_range(x.div(255), input_range).contiguous()


def cpu_fallback(data: bytes, cfg: PreprocessConfig, input_range: tuple[float, float]) -> torch.Tensor:
    """The CPU path for one image the device could not decode (raises if Pillow cannot either)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return images_to_tensor([im], cfg, input_range)  # EXIF orientation and RGB in apply_policy


def to_device_tensors(jpegs: Sequence[DeviceJpeg], decoder: Decoder, cfg: PreprocessConfig,
                      input_range: tuple[float, float], device: torch.device | str) -> list:
    """Pending JPEGs -> (1, 3, H, W) tensors on `device` in `input_range`, or the exception that
    stopped both the device and the CPU from decoding an image."""
    decoded = list(decoder([j.data for j in jpegs])) if jpegs else []
    decoded += [RuntimeError("the device decoder gave no result")] * (len(jpegs) - len(decoded))
    results: list = []
    for jpeg, chw in zip(jpegs, decoded):
        try:
            if isinstance(chw, torch.Tensor) and chw.ndim == 3 and chw.shape[0] == 3:
                results.append(policy_on_device(orient(chw, jpeg.orientation), cfg, input_range))
            else:
                results.append(cpu_fallback(jpeg.data, cfg, input_range).to(device))
        except Exception as e:
            results.append(e)
    return results
