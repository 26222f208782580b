"""Training images: WebDataset shards (local or S3) -> decoded RGB -> random resized crops + flips.

Shards are read with pipeline.sources (listing, streaming tar reader, decode); undecodable samples
are skipped and counted. Worker `rank` of `world` takes every world-th image of the shard list (by
position, so it works with fewer shards than workers). Small corpora (a few photos) are decoded once
and kept in memory (`cache_images`), so later epochs cost only the crops.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from pipeline.sources.decode import decode_sample
from pipeline.sources.listing import expand_shards
from pipeline.sources.tar_stream import iter_samples


class NoImagesError(ValueError):
    pass


def iter_images(patterns: str, storage_options: dict[str, Any] | None = None, rank: int = 0,
                world: int = 1, stats: dict[str, int] | None = None) -> Iterator[Image.Image]:
    """RGB PIL images of this worker's share of the shards, in shard order."""
    shards = expand_shards(patterns, storage_options)
    if not shards:
        raise NoImagesError(f"no shards match {patterns!r}")
    position = 0
    for shard in shards:
        for raw in iter_samples(shard.url, storage_options):
            position += 1
            if (position - 1) % world != rank:
                continue
            sample = decode_sample(raw)
            if stats is not None:
                stats["ok" if sample.ok else "skipped"] = stats.get("ok" if sample.ok else "skipped", 0) + 1
            if sample.ok:
                yield sample.image


def random_crop(image: Image.Image, size: int, rng: np.random.Generator, min_scale: float = 0.25,
                hflip: bool = True) -> np.ndarray:
    """A `size` x `size` uint8 crop after shrinking the image by a random factor (log-uniform in
    [max(size / short side, min_scale), 1]); images smaller than the crop are enlarged to fit."""
    w, h = image.size
    short = min(w, h)
    lo = min(1.0, max(size / short, min_scale))
    hi = max(1.0, size / short)
    factor = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else hi
    factor = max(factor, size / short)
    nw, nh = max(size, round(w * factor)), max(size, round(h * factor))
    left = int(rng.integers(0, nw - size + 1))
    top = int(rng.integers(0, nh - size + 1))
    # Resample only the source box of the crop (not the whole photo): same pixels, far less work.
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    resample = Image.Resampling.BICUBIC if factor > 1 else Image.Resampling.LANCZOS
    crop = np.asarray(image.resize((size, size), resample, box=box), dtype=np.uint8)
    if hflip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) crops -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    return x.div(127.5).sub(1.0)


class CropStream:
    """Endless batches of random crops from this worker's images.

    With `cache` the decoded images of the first pass are kept and later epochs sample from them;
    without it every epoch re-reads the shards and a shuffle buffer mixes crops across images."""

    def __init__(self, patterns: str, storage_options: dict[str, Any] | None, crop_size: int,
                 batch_size: int, seed: int, rank: int = 0, world: int = 1, min_scale: float = 0.25,
                 hflip: bool = True, cache: bool = True, buffer: int = 256) -> None:
        self.patterns, self.storage_options = patterns, storage_options
        self.crop_size, self.batch_size = crop_size, batch_size
        self.rank, self.world = rank, world
        self.min_scale, self.hflip, self.cache = min_scale, hflip, cache
        self.rng = np.random.default_rng([seed, rank])
        self.buffer = buffer
        self.images: list[Image.Image] | None = None
        self.stats: dict[str, int] = {}

    def _load(self) -> list[Image.Image]:
        images = list(iter_images(self.patterns, self.storage_options, self.rank, self.world, self.stats))
        if not images:
            raise NoImagesError(f"worker {self.rank}/{self.world}: no decodable images in {self.patterns!r} "
                                f"({self.stats.get('skipped', 0)} skipped)")
        return images

    def skip(self, batches: int) -> None:
        """Advance the crop RNG as if `batches` batches had been drawn (resume keeps the stream going
        somewhere new rather than replaying the first crops)."""
        self.rng = np.random.default_rng([int(self.rng.integers(2 ** 31)), batches])

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.cache:
            if self.images is None:
                self.images = self._load()
            while True:
                picks = self.rng.integers(0, len(self.images), self.batch_size)
                yield to_tensor([random_crop(self.images[i], self.crop_size, self.rng, self.min_scale, self.hflip)
                                 for i in picks])
        pool: list[np.ndarray] = []
        while True:
            seen = 0
            for image in iter_images(self.patterns, self.storage_options, self.rank, self.world, self.stats):
                seen += 1
                pool.append(random_crop(image, self.crop_size, self.rng, self.min_scale, self.hflip))
                while len(pool) >= min(self.buffer, self.batch_size * 4):
                    order = self.rng.permutation(len(pool))
                    yield to_tensor([pool[i] for i in order[:self.batch_size]])
                    pool = [pool[i] for i in order[self.batch_size:]]
            if seen == 0:
                raise NoImagesError(f"worker {self.rank}/{self.world}: no decodable images in {self.patterns!r}")


def fixed_crops(patterns: str, storage_options: dict[str, Any] | None, crop_size: int, count: int,
                seed: int = 1234, min_scale: float = 0.25) -> torch.Tensor:
    """A deterministic set of held-out crops (the same at every evaluation), round-robin over images."""
    images = list(iter_images(patterns, storage_options))
    if not images:
        raise NoImagesError(f"no decodable images in {patterns!r}")
    rng = np.random.default_rng(seed)
    return to_tensor([random_crop(images[i % len(images)], crop_size, rng, min_scale, hflip=False)
                      for i in range(count)])
