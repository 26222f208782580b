"""Images -> float tensors in a tokenizer's input convention, with an explicit resize/crop policy.

Ground floor (imports no other pipeline module): sources decode with it, tokenizers preprocess
with it, the GPU decode path shares its geometry.

The resize and crop follow torchvision's PIL path (what the reference training code uses), done
here with Pillow so no torchvision is needed: shorter side to `round(size * resize_ratio)` with
LANCZOS, then a centre crop whose offsets are rounded like `transforms.CenterCrop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, ImageOps

RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
}
MODES = ("center-crop", "resize", "native")


@dataclass
class PreprocessConfig:
    """How an image becomes the tensor the encoder sees.

    mode:
      center-crop  shorter side -> round(size * resize_ratio), centre crop size x size (VAR's val
                   transform with the default ratio 1.125)
      resize       squash to size x size (aspect ratio not kept)
      native       keep the image's own size; when the longer side exceeds `max_side`, shrink it
                   to `max_side` keeping the aspect ratio. The tokenizer pads to its stride/tiles.
    """

    mode: str = "center-crop"
    size: int = 256
    resize_ratio: float = 1.125
    resample: str = "lanczos"
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"preprocess mode must be one of {MODES}, got {self.mode!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")
        if self.size <= 0 or self.resize_ratio < 1.0:
            raise ValueError("size must be positive and resize_ratio >= 1")


def to_rgb(image: Any) -> Image.Image:
    """PIL image or uint8 array (HW, HWC with 1/3/4 channels) -> RGB PIL image, EXIF-upright.

    Transparent pixels are composited on white (dropping alpha would expose whatever colour the
    encoder left under it). High-bit-depth greyscale is scaled by its bit depth, never by its own
    min/max (a white 16-bit image stays white): see `to_8bit`.
    """
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_DEPTH_FULL_SCALE or image.mode == "I":
        image = Image.fromarray(to_8bit(np.asarray(image), image.mode), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


# Greyscale modes wider than 8 bits -> the value that means full white.
HIGH_DEPTH_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "F": 1.0}


def to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """Greyscale of more than 8 bits -> uint8 by bit depth: 16-bit 0..65535, float 0..1 (clipped);
    mode "I" (32-bit ints: Pillow's 16-bit TIFF/PNM decoders use it too) is read as 16-bit when
    every value fits 0..65535, else as 32-bit (negative values clip to black)."""
    values = arr.astype(np.float64)
    full = HIGH_DEPTH_FULL_SCALE.get(mode)
    if full is None:  # "I"
        full = 65535.0 if values.size == 0 or (values.min() >= 0 and values.max() <= 65535) else 2.0 ** 31 - 1
    return np.round(np.clip(values, 0.0, full) * (255.0 / full)).astype(np.uint8)


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 1:
            return Image.fromarray(arr[:, :, 0], "L")
        return Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA")
    raise ValueError(f"image array must be HW or HWC with 1, 3 or 4 channels, got {arr.shape}")


# The policy's geometry, as pure functions of the image size: the Pillow path below and the GPU
# path (pipeline/sources/device_decode.py) resize and crop to exactly the same boxes.

def shorter_side_size(w: int, h: int, target: int) -> tuple[int, int]:
    """(w, h) with the shorter side scaled to `target` (the longer one truncated, like torchvision)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = target, int(target * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def center_crop_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred size x size crop, offsets rounded like CenterCrop."""
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return left, top, left + size, top + size


def policy_resize(w: int, h: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """The (w, h) the policy resizes an upright w x h image to, before any crop."""
    if cfg.mode == "center-crop":
        return shorter_side_size(w, h, round(cfg.size * cfg.resize_ratio))
    if cfg.mode == "resize":
        return cfg.size, cfg.size
    if cfg.max_side is not None and max(w, h) > cfg.max_side:
        scale = cfg.max_side / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))
    return w, h


def resize_shorter(image: Image.Image, target: int, resample: str) -> Image.Image:
    size = shorter_side_size(*image.size, target)
    return image if size == image.size else image.resize(size, RESAMPLE[resample])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    return image.crop(center_crop_box(*image.size, size))


# Centre crops of images more elongated than this are resized from the crop's source box: the
# full shorter-side resize of a 2 000 000 x 4 image would be ~100 GiB. The bound keeps the resize
# output of any image within EXTREME_ASPECT x round(1.125 size)^2 pixels.
EXTREME_ASPECT = 16.0


def is_extreme(w: int, h: int) -> bool:
    return max(w, h) > EXTREME_ASPECT * min(w, h)


def source_crop_box(w: int, h: int, cfg: PreprocessConfig) -> tuple[float, float, float, float]:
    """The centre crop's box in the source image's coordinates (for Pillow's `resize(box=...)`)."""
    rw, rh = policy_resize(w, h, cfg)
    left, top, right, bottom = center_crop_box(rw, rh, cfg.size)
    sx, sy = w / rw, h / rh
    return left * sx, top * sy, right * sx, bottom * sy


def apply_policy(image: Any, cfg: PreprocessConfig) -> np.ndarray:
    """One image -> uint8 HWC RGB array after the resize/crop policy.

    The default path is the reference's op order (resize, then crop), bit for bit. An extreme
    aspect ratio (`is_extreme`) under center-crop is resized straight from the crop's source box
    instead: same geometry, memory bounded; pixels may differ by a few levels from the (unaffordable)
    full resize, and only such images take this path."""
    image = to_rgb(image)
    if cfg.mode == "center-crop" and is_extreme(*image.size):
        box = source_crop_box(*image.size, cfg)
        return np.array(image.resize((cfg.size, cfg.size), RESAMPLE[cfg.resample], box=box), dtype=np.uint8)
    size = policy_resize(*image.size, cfg)
    if size != image.size:
        image = image.resize(size, RESAMPLE[cfg.resample])
    if cfg.mode == "center-crop":
        image = center_crop(image, cfg.size)
    return np.array(image, dtype=np.uint8)


def random_crop_box(w: int, h: int, size: int, draw: bytes) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a size x size crop of a w x h image, placed like torchvision's
    RandomCrop (top in [0, h - size], left in [0, w - size], uniform) from the 16 bytes `draw`
    instead of a global RNG, so a crop is a pure function of its seed."""
    top = int.from_bytes(draw[:8], "little") % (h - size + 1)
    left = int.from_bytes(draw[8:16], "little") % (w - size + 1)
    return left, top, left + size, top + size


def policy_views(image: Any, cfg: PreprocessConfig, draws: list[bytes]) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """VAR's training transform, once per draw: (len(draws) + 1, size, size, 3) uint8 and the boxes.

    View 0 is `apply_policy(image, cfg)` (the centre crop, bit for bit); view i is the random crop
    of draw i-1 from the same resized image (shorter side to round(size * resize_ratio), LANCZOS),
    the reference's op order. Boxes are in that resized image's coordinates. Extreme aspect ratios
    resize each crop from its source box instead (as `apply_policy` does for the centre crop)."""
    if cfg.mode != "center-crop":
        raise ValueError(f"random crops need the center-crop policy, not {cfg.mode!r}")
    image = to_rgb(image)
    rw, rh = policy_resize(*image.size, cfg)
    boxes = [center_crop_box(rw, rh, cfg.size)] + [random_crop_box(rw, rh, cfg.size, d) for d in draws]
    if is_extreme(*image.size):
        sx, sy = image.size[0] / rw, image.size[1] / rh
        views = [np.array(image.resize((cfg.size, cfg.size), RESAMPLE[cfg.resample],
                                       box=(l * sx, t * sy, r * sx, b * sy)), dtype=np.uint8) for l, t, r, b in boxes]
        return np.stack(views), boxes
    resized = image if (rw, rh) == image.size else image.resize((rw, rh), RESAMPLE[cfg.resample])
    return np.stack([np.array(resized.crop(box), dtype=np.uint8) for box in boxes]), boxes


def unit_to_range(x: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    """Floats in [0, 1] -> `input_range`. For [-1, 1] the reference's arithmetic: x + x - 1."""
    if tuple(input_range) == (0.0, 1.0):
        return x
    if tuple(input_range) == (-1.0, 1.0):
        return x.add(x).add_(-1)
    lo, hi = input_range
    return x.mul(hi - lo).add_(lo)


def uint8_to_tensor(batch: np.ndarray | torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in `input_range`.

    For [-1, 1] the arithmetic is the reference's: x = u8 / 255, then x + x - 1, in float32, so
    the floats are bit-identical to what the reference data loader feeds its encoder.
    """
    t = torch.as_tensor(batch)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8, got {tuple(t.shape)} {t.dtype}")
    return unit_to_range(t.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255), input_range)


def images_to_tensor(images: Iterable[Any], cfg: PreprocessConfig,
                     input_range: tuple[float, float]) -> torch.Tensor:
    """Apply the policy to every image and stack; all results must share one size."""
    arrays = [apply_policy(im, cfg) for im in images]
    if not arrays:
        raise ValueError("no images to preprocess")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes after preprocessing {sorted(shapes)}; "
                         "preprocess them one at a time or bucket them by size")
    return uint8_to_tensor(np.stack(arrays), input_range)
