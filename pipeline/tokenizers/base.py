"""The one interface every tokenizer family implements, its result type and the name registry.

A tokenizer is a torch module (encoder + quantizer + decoder) wrapped with the policies the
pipeline needs to reproduce its tokens: how images become tensors (`preprocess`), which precision
the encoder runs in, and a fingerprint of all of it. Nothing here imports Ray or I/O code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.images import PreprocessConfig, images_to_tensor

PRECISIONS = ("fp32", "bf16")


@dataclass
class MultiScaleTokens:
    """Token grids of a batch, one entry per scale, small to large.

    grids:        per scale, an integer tensor (B, h_k, w_k), or (B, h_k, w_k, G) for grouped
                  quantisers; float tensors (B, h_k, w_k, C) for continuous tokenizers.
    patch_nums:   the scale schedule that produced them (the square-equivalent side per scale).
    image_size:   (H, W) of the images as given to `encode` (before tiling pads them).
    padded_size:  (H, W) of the canvas actually encoded (after padding for the stride / tiles).
    extras:       family-specific metadata needed to decode (tile plan, positions, ...).
    """

    grids: list[torch.Tensor]
    patch_nums: tuple[int, ...]
    image_size: tuple[int, int] | None = None
    padded_size: tuple[int, int] | None = None
    continuous: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.grids[0].shape[0])

    @property
    def scale_shapes(self) -> list[tuple[int, int]]:
        return [(int(g.shape[1]), int(g.shape[2])) for g in self.grids]

    @property
    def num_tokens(self) -> int:
        return sum(h * w for h, w in self.scale_shapes)

    def flat(self) -> torch.Tensor:
        """All scales concatenated row-major: (B, L) or (B, L, G) / (B, L, C)."""
        b = self.batch_size
        return torch.cat([g.reshape(b, -1, *g.shape[3:]) for g in self.grids], dim=1)

    @classmethod
    def from_flat(cls, flat: torch.Tensor, scale_shapes: Sequence[tuple[int, int]],
                  patch_nums: Sequence[int], **kwargs: Any) -> "MultiScaleTokens":
        """Inverse of `flat()`, e.g. for token rows read back from Parquet."""
        grids, start = [], 0
        for h, w in scale_shapes:
            grids.append(flat[:, start:start + h * w].reshape(flat.shape[0], h, w, *flat.shape[2:]))
            start += h * w
        if start != flat.shape[1]:
            raise ValueError(f"{flat.shape[1]} tokens do not match scale shapes totalling {start}")
        return cls(grids=grids, patch_nums=tuple(patch_nums), **kwargs)

    def to(self, device: torch.device | str) -> "MultiScaleTokens":
        return dataclasses.replace(self, grids=[g.to(device) for g in self.grids])


class Tokenizer:
    """Base class: subclasses set `model` and implement `_encode` / `_decode`.

    The public methods handle precision, no-grad and device placement, so a family only writes
    the maths. Attributes every family sets:
      name            registry name
      model           the nn.Module holding every weight (what the checkpoint loads into)
      config          the reference implementation's constructor arguments, completed with defaults
      vocab_size      codes per position (0 for continuous tokenizers)
      groups          codes per position for grouped quantisers (1 otherwise)
      patch_nums      default scale schedule
      downsample      pixels per latent cell
      supports_tiling whether `encode` accepts tile_size/overlap (others raise a clear error)
    """

    name: str = "base"
    vocab_size: int = 0
    groups: int = 1
    continuous: bool = False
    patch_nums: tuple[int, ...] = ()
    downsample: int = 1
    input_range: tuple[float, float] = (-1.0, 1.0)
    supports_tiling: bool = False

    def __init__(self, model: nn.Module, config: dict[str, Any], *,
                 preprocess_config: PreprocessConfig | None = None, precision: str = "fp32",
                 device: str | torch.device = "cpu") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = dict(config)
        self.preprocess_config = preprocess_config or PreprocessConfig()
        self.precision = precision
        self.device = torch.device(device)
        self.model.to(self.device)
        self._fingerprint: str | None = None

    # ---------------------------------------------------------------- preprocessing
    def preprocess(self, images: Iterable[Any], config: PreprocessConfig | None = None) -> torch.Tensor:
        """uint8 HWC arrays / PIL images -> float NCHW tensor in this tokenizer's input range."""
        cfg = config or self.preprocess_config
        return images_to_tensor(images, cfg, self.input_range)

    # ---------------------------------------------------------------- encode / decode
    def encode(self, x: torch.Tensor, patch_nums: Sequence[int] | None = None,
               tile_size: int | None = None, overlap: int | None = None) -> MultiScaleTokens:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"encode expects (B, 3, H, W) images, got shape {tuple(x.shape)}")
        pn = tuple(int(p) for p in patch_nums) if patch_nums is not None else self.patch_nums
        with torch.inference_mode(), self.autocast():
            return self._encode(x.to(self.device, torch.float32), pn, tile_size, overlap)

    def decode(self, tokens: MultiScaleTokens, upto: int | None = None) -> torch.Tensor:
        n = len(tokens.grids)
        upto = n if upto is None else int(upto)
        if not 1 <= upto <= n:
            raise ValueError(f"upto must be in 1..{n}, got {upto}")
        with torch.inference_mode(), self.autocast():
            return self._decode(tokens.to(self.device), upto).float()

    def _encode(self, x: torch.Tensor, patch_nums: tuple[int, ...], tile_size: int | None,
                overlap: int | None) -> MultiScaleTokens:
        raise NotImplementedError

    def _decode(self, tokens: MultiScaleTokens, upto: int) -> torch.Tensor:
        raise NotImplementedError

    def to_var_input(self, tokens: MultiScaleTokens) -> torch.Tensor:
        """Teacher-forcing input of a VAR transformer (B, L-1, C). Only residual tokenizers have one."""
        raise NotImplementedError(f"{self.name} tokens cannot drive a VAR transformer")

    # ---------------------------------------------------------------- precision and device
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the convs; quantiser code opts out with `fp32_region()`."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return _tf32_disabled()

    def to(self, device: str | torch.device) -> "Tokenizer":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    # ---------------------------------------------------------------- identity
    def describe(self) -> dict[str, Any]:
        """Everything that determines the tokens, in a JSON-serialisable dict."""
        return {
            "name": self.name,
            "config": _jsonable(self.config),
            "preprocess": dataclasses.asdict(self.preprocess_config),
            "precision": self.precision,
            "vocab_size": self.vocab_size,
            "groups": self.groups,
            "patch_nums": list(self.patch_nums),
        }

    def fingerprint(self) -> str:
        """sha256 over weights (name, dtype, shape, bytes) and `describe()`; cached."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.describe(), sort_keys=True).encode())
            h.update(state_dict_digest(self.model.state_dict()).encode())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint


def fp32_region(device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """Autocast off: nearest-code distances are computed in float32 whatever the precision."""
    return torch.autocast(device_type, enabled=False)


@contextlib.contextmanager
def _tf32_disabled():
    # TF32 changes conv/matmul results on Ampere+ GPUs and would flip near-tie tokens.
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def state_dict_digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def merge_config(defaults: dict[str, Any], config: dict[str, Any] | None, family: str) -> dict[str, Any]:
    """Released-model defaults overridden by `config`; unknown keys are an error, not ignored."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"{family}: unknown config keys {unknown}; known keys: {sorted(defaults)}")
    return {**defaults, **config}


# ------------------------------------------------------------------------ registry
TokenizerFactory = Callable[..., Tokenizer]
_REGISTRY: dict[str, TokenizerFactory] = {}

# Families are imported on first use, so `import pipeline.tokenizers` stays light and a family's
# import error only affects that family.
_BUILTIN_MODULES = {
    "var-vqvae": "pipeline.tokenizers.var_vqvae",
    "svqvae": "pipeline.tokenizers.svqvae",
    "flexvar": "pipeline.tokenizers.svqvae",
    "gq": "pipeline.tokenizers.gq",
    "gsq": "pipeline.tokenizers.gsq",
    "vitok": "pipeline.tokenizers.vitok",
    "default": "pipeline.tokenizers.default",
}


def register_tokenizer(name: str) -> Callable[[TokenizerFactory], TokenizerFactory]:
    def wrap(factory: TokenizerFactory) -> TokenizerFactory:
        _REGISTRY[name] = factory
        return factory
    return wrap


class UnknownTokenizer(KeyError):
    """A name the registry does not know. A KeyError (a lookup that failed) whose message reads as
    written: str(KeyError) would wrap it in quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def available_tokenizers() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def load_tokenizer(name: str, checkpoint: str | None = None, config: dict[str, Any] | None = None,
                   **options: Any) -> Tokenizer:
    """Build tokenizer `name` from the reference constructor `config` and load `checkpoint`.

    options: precision ("fp32" | "bf16"), device, preprocess (PreprocessConfig or dict), and
    family-specific switches. Without a checkpoint the weights are seeded random (tests, benchmarks).
    """
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise UnknownTokenizer(f"unknown tokenizer {name!r}; available: {', '.join(available_tokenizers())}")
    pre = options.get("preprocess")
    if isinstance(pre, dict):
        options["preprocess"] = PreprocessConfig(**pre)
    return _REGISTRY[name](checkpoint=checkpoint, config=config, **options)
