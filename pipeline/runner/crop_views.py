"""The images an ok sample is encoded from: the policy's image, plus K seeded random crops with
`--variants crop:K` (VAR's training transform: shorter side to round(1.125 size) with LANCZOS,
a random size x size crop).

A crop's place is a pure function of (job seed, sample key, crop index), hashed, never drawn from
a shared RNG: the same job writes the same crops whatever the number of actors, the order the
shards are handed out, or retries.
"""

from __future__ import annotations

import hashlib

import torch

from pipeline.runner.config import JobSpec
from pipeline.sources.decode import DecodedSample
from pipeline.tokenizers.base import Tokenizer
from pipeline.images import policy_views, uint8_to_tensor


def crop_draw(seed: int, key: str, index: int) -> bytes:
    """16 bytes that place crop `index` of sample `key` (see preprocess.random_crop_box)."""
    return hashlib.sha256(f"{int(seed)}\0{key}\0{int(index)}".encode()).digest()[:16]


def preprocess_views(tok: Tokenizer, spec: JobSpec, sample: DecodedSample) -> torch.Tensor:
    """(1 + K, 3, H, W) in the tokenizer's input range: view 0 is exactly `tok.preprocess` of the
    image, views 1..K the crops; their boxes go to `sample.crop_boxes`. Without crops: (1, 3, H, W)."""
    if not spec.crops:
        return tok.preprocess([sample.image])
    draws = [crop_draw(spec.seed, sample.key, i) for i in range(spec.crops)]
    views, boxes = policy_views(sample.image, tok.preprocess_config, draws)
    sample.crop_boxes = boxes
    return uint8_to_tensor(views, tok.input_range)
