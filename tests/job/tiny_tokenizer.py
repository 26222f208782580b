"""A real but tiny multi-scale tokenizer for fast scheduling/chaos tests: per scale, area-pool the
image to the scale's grid and pick the nearest of V seeded RGB codes. Registered as "tiny-pool";
Ray actors import this module through the job's `tokenizer_module`.

`config["delay"]` sleeps that many seconds per encode call (for killing actors mid-shard);
`config["jitter"]` adds a random offset to every code (an encoding that is not bit-reproducible,
like bf16 on mixed GPUs); `config["hang_once"]` (a file path) makes the first encode call of the
whole test hang for 10 minutes (a hung actor). All three are left out of `describe()` so such runs
have the same fingerprint as a plain one. (`hang_once` hangs only inside Ray workers.)
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer, merge_config, register_tokenizer
from pipeline.images import PreprocessConfig
from pipeline.tokenizers.quantizers.base import nearest_code_l2

DEFAULTS = {"vocab_size": 64, "patch_nums": (1, 2, 4, 8), "seed": 0, "delay": 0.0, "image_size": 64,
            "jitter": False, "hang_once": ""}
BEHAVIOUR_ONLY = ("delay", "jitter", "hang_once")


class Codebook(nn.Module):
    def __init__(self, vocab_size: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.codes = nn.Parameter(torch.rand(vocab_size, 3, generator=g) * 2 - 1)


class TinyPoolTokenizer(Tokenizer):
    name = "tiny-pool"
    input_range = (-1.0, 1.0)
    downsample = 8

    def __init__(self, config: dict[str, Any], **kw: Any) -> None:
        super().__init__(Codebook(config["vocab_size"], config["seed"]), config, **kw)
        self.vocab_size = int(config["vocab_size"])
        self.patch_nums = tuple(int(p) for p in config["patch_nums"])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["config"] = {k: v for k, v in d["config"].items() if k not in BEHAVIOUR_ONLY}
        return d

    def _encode(self, x, patch_nums, tile_size, overlap) -> MultiScaleTokens:
        if self.config["delay"]:
            time.sleep(float(self.config["delay"]))
        marker = self.config["hang_once"]
        if marker and _in_ray_worker() and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(600)
        b, _, h, w = x.shape
        longest = max(h, w)
        grids = []
        for pn in patch_nums:
            gh, gw = max(1, round(pn * h / longest)), max(1, round(pn * w / longest))
            pooled = F.adaptive_avg_pool2d(x.float(), (gh, gw))
            rows = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
            codes = nearest_code_l2(rows, self.model.codes).reshape(b, gh, gw)
            if self.config["jitter"]:
                codes = (codes + int.from_bytes(os.urandom(2), "little")) % self.vocab_size
            grids.append(codes)
        return MultiScaleTokens(grids=grids, patch_nums=tuple(patch_nums), image_size=(h, w), padded_size=(h, w))


def _in_ray_worker() -> bool:
    """True in a Ray actor/task process (the driver also encodes, e.g. to plan scale grids)."""
    try:
        import ray

        return ray._private.worker.global_worker.mode == ray.WORKER_MODE
    except Exception:
        return False


def _decode_tiny(self, tokens: MultiScaleTokens, upto: int):
    """Scale `upto`'s grid painted with its codes' colours at the image size (a real, if crude,
    decoder: the reconstruction audit measures it)."""
    grid = tokens.grids[upto - 1].long()
    colours = self.model.codes[grid].permute(0, 3, 1, 2)
    size = tokens.image_size or (grid.shape[1] * 8, grid.shape[2] * 8)
    return F.interpolate(colours, size=tuple(int(v) for v in size), mode="nearest")


TinyPoolTokenizer._decode = _decode_tiny


@register_tokenizer("tiny-pool")
def build_tiny(checkpoint: str | None = None, config: dict[str, Any] | None = None, *, precision: str = "fp32",
               device: str = "cpu", preprocess: PreprocessConfig | None = None, **_: Any) -> TinyPoolTokenizer:
    cfg = merge_config(DEFAULTS, config, "tiny-pool")
    pre = preprocess or PreprocessConfig(size=int(cfg["image_size"]))
    return TinyPoolTokenizer(cfg, preprocess_config=pre, precision=precision, device=device)
