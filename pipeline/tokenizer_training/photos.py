"""The offline photo set the embedded default tokenizer is trained on, written as WebDataset shards.

Whole photos (PNG, lossless) from packages installed with scaletok, so the training command runs
with no download: scikit-image's bundled images, matplotlib's sample data and, when scikit-learn
happens to be installed, its two sample photos. Two photos never enter training: they are the
held-out set the README's PSNR is measured on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

# (package, name): scikit-image loader names or files of matplotlib's sample_data.
TRAIN_PHOTOS = (
    ("skimage", "astronaut"), ("skimage", "coffee"), ("skimage", "rocket"), ("skimage", "hubble_deep_field"),
    ("skimage", "immunohistochemistry"), ("skimage", "retina"), ("skimage", "stereo_motorcycle"),
    ("skimage", "colorwheel"), ("skimage", "camera"), ("skimage", "coins"), ("skimage", "moon"),
    ("skimage", "clock"), ("skimage", "text"), ("skimage", "brick"), ("skimage", "grass"),
    ("skimage", "gravel"), ("skimage", "cell"), ("skimage", "page"),
    ("matplotlib", "Minduka_Present_Blue_Pack.png"),
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
)
HELD_OUT_PHOTOS = (("skimage", "chelsea"), ("matplotlib", "grace_hopper.jpg"))


def load_photo(package: str, name: str) -> np.ndarray | None:
    """uint8 RGB (H, W, 3), or None when the package (optional ones) is not installed."""
    if package == "skimage":
        import skimage.data
        image = getattr(skimage.data, name)()
        if isinstance(image, tuple):  # stereo pairs: the left view
            image = image[0]
    elif package == "matplotlib":
        import matplotlib
        path = os.path.join(matplotlib.get_data_path(), "sample_data", name)
        if not os.path.exists(path):
            return None
        image = np.asarray(Image.open(path).convert("RGB"))
    elif package == "sklearn":
        try:
            from sklearn.datasets import load_sample_image
        except ImportError:
            return None
        image = load_sample_image(name)
    else:
        raise ValueError(f"unknown photo package {package!r}")
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def write_photo_shards(out_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Write `train-000000.tar` and `heldout-000000.tar` into out_dir; returns {'train': [...], 'heldout': [...]}."""
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    for split, photos in (("train", TRAIN_PHOTOS), ("heldout", HELD_OUT_PHOTOS)):
        path = out / f"{split}-000000.tar"
        names = []
        with open(path.with_suffix(".partial"), "wb") as stream, \
                wds.TarWriter(stream, encoder=False, mtime=1704067200) as writer:
            for package, name in photos:
                image = load_photo(package, name)
                if image is None:
                    continue
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG", compress_level=6)
                key = f"{package}_{name.split('.')[0]}"
                writer.write({"__key__": key, "png": buf.getvalue()})
                names.append(key)
        os.replace(path.with_suffix(".partial"), path)
        written[split] = [str(path)]
        written[split + "_photos"] = names
    return written


def heldout_crops(size: int = 128, count: int = 16, seed: int = 0, min_scale: float = 0.12):
    """A fixed set of (count, 3, size, size) crops in [-1, 1] of the held-out photos (never trained on):
    the set the default tokenizer's stated PSNR is measured on."""
    from pipeline.tokenizer_training.data import random_crop, to_tensor

    photos = [Image.fromarray(p) for p in (load_photo(*ref) for ref in HELD_OUT_PHOTOS) if p is not None]
    if not photos:
        raise FileNotFoundError("none of the held-out photos is installed (scikit-image, matplotlib)")
    rng = np.random.default_rng(seed)
    return to_tensor([random_crop(photos[i % len(photos)], size, rng, min_scale, hflip=False) for i in range(count)])
