"""The bundled sample corpus: real photographs shipped inside scikit-image, written as WebDataset shards.

Every sample is a deterministic crop (+ optional horizontal flip + resize) of one source photo, so a
few hundred samples of varied sizes and aspect ratios come out of a dozen images with no download.
Sample `i` depends only on (seed, i): changing the shard layout or `max_side` never changes which
crop a sample is, only where it lands or how many pixels it has.

Byte-identical output across runs: per-sample RNG from a fixed seed, fixed JPEG quality/subsampling,
fixed PNG compression level, and fixed tar header fields (mtime, owner, mode) in TarWriter, which
would otherwise stamp every member with time.time().
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# Fixed tar header fields: TarWriter uses time.time() for mtime unless told otherwise.
TAR_MTIME = 1704067200  # 2024-01-01T00:00:00Z
TAR_USER = "scaletok"
TAR_GROUP = "scaletok"
TAR_MODE = 0o444

JPEG_QUALITY = 90
JPEG_SUBSAMPLING = 2  # 4:2:0, stated explicitly so a Pillow default change cannot alter the bytes
PNG_COMPRESS_LEVEL = 6

DEFAULT_MAX_SIDE = 640
MIN_LONG_SIDE = 32    # floor for tiny test corpora
MIN_SHORT_SIDE = 16   # no image thinner than this (smallest a 16x-downsampling tokenizer can take)
ASPECT_RANGE = (0.5, 2.0)        # width / height, drawn log-uniformly
CROP_AREA_RANGE = (0.35, 1.0)    # fraction of the largest crop of that aspect that fits the source
PNG_FRACTION = 0.25
GRAY_KEPT_AS_L_FRACTION = 0.5    # the rest of the greyscale samples are converted to RGB


@dataclass(frozen=True)
class SourcePhoto:
    name: str       # scikit-image loader name (skimage.data.<name>)
    license: str    # as stated in the loader's docstring


# The label of a sample is the index of its source photo in this tuple: never reorder, only append.
SOURCES: tuple[SourcePhoto, ...] = (
    SourcePhoto("astronaut", "public domain (NASA): 'No known copyright restrictions, released into the public domain.'"),
    SourcePhoto("chelsea", "CC0 by the photographer (Stefan van der Walt)"),
    SourcePhoto("coffee", "CC0 by the photographer (Rachel Michetti)"),
    SourcePhoto("rocket", "public domain (SpaceX)"),
    SourcePhoto("hubble_deep_field", "public domain (NASA)"),
    SourcePhoto("immunohistochemistry", "no known copyright restrictions"),
    SourcePhoto("retina", "CC0 1.0 Universal / Public Domain Dedication"),
    SourcePhoto("stereo_motorcycle", "no license stated (Middlebury 2014 stereo dataset)"),
    SourcePhoto("camera", "CC0 by the photographer (Lav Varshney)"),
    SourcePhoto("coins", "no known copyright restrictions"),
    SourcePhoto("moon", "no license stated"),
    SourcePhoto("clock", "public domain (released by the photographer, Stefan van der Walt)"),
    SourcePhoto("text", "public domain: 'No known copyright restrictions, released into the public domain.'"),
)
LABEL_NAMES: tuple[str, ...] = tuple(s.name for s in SOURCES)


@lru_cache(maxsize=None)
def load_source(name: str) -> np.ndarray:
    """The source photo as a uint8 array, (H, W, 3) for colour or (H, W) for greyscale."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"scikit-image has no bundled image named {name!r}")
    image = loader()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity): take the left view
        image = image[0]
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is {image.dtype}, expected uint8")
    return image


@dataclass(frozen=True)
class SamplePlan:
    """Everything that decides one sample, drawn from its own RNG."""
    label: int
    crop: tuple[int, int, int, int]   # left, top, right, bottom in source pixels
    flip: bool                        # horizontal flip after cropping
    size: tuple[int, int]             # output width, height
    mode: str                         # "RGB" or "L"
    ext: str                          # "jpg" or "png"


def plan_sample(index: int, seed: int, max_side: int) -> SamplePlan:
    """Deterministic geometry of sample `index`: source, crop box, flip, output size, mode, format."""
    rng = np.random.default_rng([seed, index])
    # Cycle through the sources so every label appears, whatever the corpus size.
    label = index % len(SOURCES)
    source = load_source(SOURCES[label].name)
    src_h, src_w = source.shape[:2]
    # Only rng.random() draws: its stream is stable across numpy versions.
    u_aspect, u_area, u_x, u_y, u_flip, u_side, u_ext, u_mode = rng.random(8)

    lo, hi = np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1])
    aspect = float(np.exp(lo + u_aspect * (hi - lo)))  # width / height
    # Largest crop of this aspect inside the source, then shrink it by an area fraction.
    if src_w / src_h > aspect:
        max_h, max_w = src_h, src_h * aspect
    else:
        max_w, max_h = src_w, src_w / aspect
    scale = np.sqrt(CROP_AREA_RANGE[0] + u_area * (CROP_AREA_RANGE[1] - CROP_AREA_RANGE[0]))
    crop_w = max(1, min(src_w, int(round(max_w * scale))))
    crop_h = max(1, min(src_h, int(round(max_h * scale))))
    left = int(round(u_x * (src_w - crop_w)))
    top = int(round(u_y * (src_h - crop_h)))

    min_long = min(max_side, max(MIN_LONG_SIDE, max_side * 3 // 20))  # 96 for the default 640
    long_side = min_long + int(round(u_side * (max_side - min_long)))
    if aspect >= 1:
        out_w, out_h = long_side, max(MIN_SHORT_SIDE, int(round(long_side / aspect)))
    else:
        out_h, out_w = long_side, max(MIN_SHORT_SIDE, int(round(long_side * aspect)))

    is_gray = source.ndim == 2
    mode = "L" if is_gray and u_mode < GRAY_KEPT_AS_L_FRACTION else "RGB"
    ext = "png" if u_ext < PNG_FRACTION else "jpg"
    return SamplePlan(label=label, crop=(left, top, left + crop_w, top + crop_h), flip=bool(u_flip < 0.5),
                      size=(out_w, out_h), mode=mode, ext=ext)


def render_sample(plan: SamplePlan) -> Image.Image:
    """Cut, flip and resize the source photo as the plan says."""
    source = Image.fromarray(load_source(SOURCES[plan.label].name))
    image = source.crop(plan.crop)
    if plan.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.resize(plan.size, resample=Image.Resampling.LANCZOS)
    return image.convert(plan.mode)


def encode_image(image: Image.Image, ext: str) -> bytes:
    buffer = io.BytesIO()
    if ext == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING, optimize=False)
    elif ext == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    else:
        raise ValueError(f"unsupported image format {ext!r} (expected 'jpg' or 'png')")
    return buffer.getvalue()


def sample_key(index: int) -> str:
    return f"s{index:06d}"  # no dots: WebDataset splits key from extension at the first dot


def build_sample(index: int, seed: int, max_side: int) -> dict:
    """One WebDataset sample dict: __key__ plus image, .cls and .json members as bytes."""
    plan = plan_sample(index, seed, max_side)
    source = SOURCES[plan.label]
    src_h, src_w = load_source(source.name).shape[:2]
    meta = {
        "source": source.name,
        "package": "scikit-image",
        "license": source.license,
        "label": plan.label,
        "source_size": [src_w, src_h],
        "crop": list(plan.crop),
        "flip": plan.flip,
        "size": list(plan.size),
        "mode": plan.mode,
        "format": plan.ext,
    }
    return {
        "__key__": sample_key(index),
        plan.ext: encode_image(render_sample(plan), plan.ext),
        "cls": str(plan.label).encode("ascii"),
        "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
    }


def shard_name(shard_index: int) -> str:
    return f"sample-{shard_index:06d}.tar"


def write_sample_corpus(out_dir: str | os.PathLike, num_shards: int = 4, samples_per_shard: int = 64,
                        seed: int = 0, max_side: int = DEFAULT_MAX_SIDE) -> list[str]:
    """Write `num_shards` WebDataset tars `out_dir/sample-000000.tar ...`; return their paths in order.

    Sample keys run s000000, s000001, ... across shards. `max_side` caps the long side of every
    image (use a small value, e.g. 64, for quick test corpora); sizes are drawn between
    max(32, 0.15 * max_side) and max_side. Existing shards of the same names are overwritten.
    """
    import webdataset as wds

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if max_side < MIN_LONG_SIDE:
        raise ValueError(f"max_side must be >= {MIN_LONG_SIDE}, got {max_side}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        path = out / shard_name(shard)
        partial = path.with_name(path.name + ".partial")  # readers never see a half-written shard
        with open(partial, "wb") as stream:
            with wds.TarWriter(stream, encoder=False, mtime=TAR_MTIME, user=TAR_USER, group=TAR_GROUP,
                               mode=TAR_MODE) as writer:
                for i in range(shard * samples_per_shard, (shard + 1) * samples_per_shard):
                    writer.write(build_sample(i, seed, max_side))
        os.replace(partial, path)
        paths.append(str(path))
    return paths
