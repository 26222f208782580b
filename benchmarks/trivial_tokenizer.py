"""A near-zero-cost tokenizer for overhead benchmarks: per scale, average-pool the image to the
scale's grid and bin its brightness into `vocab_size` codes. Registered as "bench-trivial"; the
job's actors import it through `--tokenizer-module benchmarks.trivial_tokenizer`."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer, merge_config, register_tokenizer
from pipeline.images import PreprocessConfig

DEFAULTS = {"vocab_size": 16, "patch_nums": (1, 2), "image_size": 32}


class TrivialTokenizer(Tokenizer):
    name = "bench-trivial"
    input_range = (-1.0, 1.0)
    downsample = 16

    def __init__(self, config: dict[str, Any], **kw: Any) -> None:
        super().__init__(nn.Identity(), config, **kw)
        self.vocab_size = int(config["vocab_size"])
        self.patch_nums = tuple(int(p) for p in config["patch_nums"])

    def _encode(self, x, patch_nums, tile_size, overlap) -> MultiScaleTokens:
        b, _, h, w = x.shape
        grids = []
        for pn in patch_nums:
            level = F.adaptive_avg_pool2d(x.float().mean(1, keepdim=True), (pn, pn))[:, 0]
            grids.append(((level + 1) / 2 * self.vocab_size).long().clamp_(0, self.vocab_size - 1))
        return MultiScaleTokens(grids=grids, patch_nums=tuple(patch_nums), image_size=(h, w), padded_size=(h, w))


@register_tokenizer("bench-trivial")
def build_trivial(checkpoint: str | None = None, config: dict[str, Any] | None = None, *, precision: str = "fp32",
                  device: str = "cpu", preprocess: PreprocessConfig | None = None, **_: Any) -> TrivialTokenizer:
    cfg = merge_config(DEFAULTS, config, "bench-trivial")
    pre = preprocess or PreprocessConfig(size=int(cfg["image_size"]))
    return TrivialTokenizer(cfg, preprocess_config=pre, precision=precision, device=device)
