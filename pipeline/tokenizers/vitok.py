"""ViTok-v2 (Na-VAE/vitok-release): a continuous ViT autoencoder over NaFlex patch sequences.

There is no codebook: an image becomes one grid of c-channel latents, one per p x p patch, at
its own aspect ratio. Images are first shrunk to a token budget (`max_tokens` patches), then cut
into patches (`naflex.py`), encoded by the ViT (`vit_blocks.py`) with 2-D RoPE and a padding
mask, so each image's latents are the same whichever images share its batch.

In `MultiScaleTokens` the single "scale" is the latent image (B, R, C, c): image i's token at
patch (r, k) sits at [i, r, k] for r < grid_rows[i], k < grid_cols[i]; batches of mixed sizes
are zero-padded to the largest grid. `extras` holds per image: grid_rows, grid_cols and
orig_height/orig_width (the content size in pixels inside the grid, after the budget resize),
plus the patch size. `tokens_to_rows` / `rows_to_tokens` convert to and from what the job
stores per image: latent (R*C, c) float16 in raster order, the grid and the content size.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.tokenizers import naflex
from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer, merge_config, register_tokenizer
from pipeline.tokenizers.checkpoints import CheckpointError, load_into, read_state_dict
from pipeline.images import PreprocessConfig, apply_policy, uint8_to_tensor
from pipeline.tokenizers.vit_blocks import ViTokAE

# ------------------------------------------------------------------------ configuration
# The reference `AE` constructor arguments; defaults = the released 350M f16 x 64 model
# (variant "Ld4-Ld24/1x16x64", HF philippehansen/ViTok-v2-350M-f16x64).
RELEASED_CONFIG: dict[str, Any] = {
    "encoder_width": 1024, "decoder_width": 1024, "encoder_depth": 4, "decoder_depth": 24,
    "encoder_heads": 16, "decoder_heads": 16, "mlp_factor": 2.67, "temporal_stride": 1,
    "spatial_stride": 16, "channels_per_token": 64, "pixels_per_token": 768,
    # "sdpa" = masked attention (padding invisible); "flash" = the reference default, where
    # padding tokens take part in attention (run here with unmasked SDPA, not flash-attn).
    "attn_backend": "sdpa",
    "use_layer_scale": True, "layer_scale_init": 1e-4,
    "encoder": True, "decoder": True,
    # Reference arguments accepted for compatibility; only their inference no-op values work.
    "drop_path_rate": 0.0, "checkpoint": 0, "sw": None, "class_token": False, "reg_tokens": 0,
    "float8_mode": None, "train_seq_len": None,
    "variant": None,
}
ARCH_KEYS = ("encoder_width", "decoder_width", "encoder_depth", "decoder_depth", "encoder_heads",
             "decoder_heads", "mlp_factor", "temporal_stride", "spatial_stride",
             "channels_per_token", "pixels_per_token")
ENCODER_PREFIXES = ("patch_embed.", "encoder_blocks.", "to_code.")
DECODER_PREFIXES = ("decoder_embed.", "decoder_blocks.", "to_pixels.")

_BASES = {"B": (768, 12, 12), "L": (1024, 24, 16), "G": (1728, 32, 24), "T": (3072, 40, 24),
          "E": (4096, 48, 32)}
_DEFAULT_MLP = 2.67


def _parse_side(name: str) -> tuple[int, int, int, float]:
    """One side of a variant -> (width, depth, heads, mlp_factor)."""
    custom = re.fullmatch(r"w(\d+)_d(\d+)_h(\d+)(?:_m(\d+(?:\.\d+)?))?", name)
    if custom:
        w, d, h, m = custom.groups()
        return int(w), int(d), int(h), float(m) if m else _DEFAULT_MLP
    pattern = r"w\d+|d\d+|h\d+|m\d+(?:\.\d+)?"
    base = re.sub(pattern, "", name)
    if base and base not in _BASES:
        raise ValueError(f"unknown ViTok base {base!r} in {name!r}; bases: {sorted(_BASES)}")
    width, depth, heads = _BASES.get(base, _BASES["B"])
    found = {m.group(0)[0]: m.group(0)[1:] for m in reversed(list(re.finditer(pattern, name)))}
    return (int(found.get("w", width)), int(found.get("d", depth)), int(found.get("h", heads)),
            float(found.get("m", _DEFAULT_MLP)))


def decode_variant(variant: str) -> dict[str, Any]:
    """"{ENC}-{DEC}/{t}x{p}x{c}", "{V}/{t}x{p}x{c}" or "{V}/{p}x{c}" -> AE architecture kwargs."""
    try:
        sides, strides = variant.split("/")
        enc, dec = sides.split("-") if "-" in sides else (sides, sides)
        numbers = [int(s) for s in strides.split("x")]
    except ValueError:
        raise ValueError(f"ViTok variant {variant!r} is not '{{ENC}}[-{{DEC}}]/[t x]p x c'") from None
    if len(numbers) not in (2, 3):
        raise ValueError(f"ViTok variant {variant!r}: expected t x p x c or p x c after '/'")
    t, p, c = numbers if len(numbers) == 3 else (1, *numbers)
    (ew, ed, eh, em), (dw, dd, dh, dm) = _parse_side(enc), _parse_side(dec)
    return {"encoder_width": ew, "decoder_width": dw, "encoder_depth": ed, "decoder_depth": dd,
            "encoder_heads": eh, "decoder_heads": dh, "mlp_factor": max(em, dm),
            "temporal_stride": t, "spatial_stride": p, "channels_per_token": c,
            "pixels_per_token": p * p * t * 3}


def resolve_config(config: dict[str, Any] | str | None) -> dict[str, Any]:
    """Reference constructor kwargs (or a variant string) -> the complete, validated config."""
    if isinstance(config, str):
        config = {"variant": config}
    config = dict(config or {})
    variant = config.get("variant")
    if variant:
        arch = decode_variant(variant)
        clashes = sorted(k for k in ARCH_KEYS if k in config and config[k] != arch[k])
        if clashes:
            raise ValueError(f"vitok: variant {variant!r} disagrees with explicit {clashes}")
        # Expanded, so a variant and the equivalent kwargs give the same config and fingerprint.
        config = {**arch, **config, "variant": None}
    cfg = merge_config(RELEASED_CONFIG, config, "vitok")
    p, t = int(cfg["spatial_stride"]), int(cfg["temporal_stride"])
    if t != 1:
        raise ValueError(f"vitok: temporal_stride {t} is for video; images need 1")
    if int(cfg["pixels_per_token"]) != 3 * p * p * t:
        raise ValueError(f"vitok: pixels_per_token {cfg['pixels_per_token']} != 3*{p}*{p}")
    if cfg["attn_backend"] not in ("sdpa", "flash"):
        raise ValueError(f"vitok: attn_backend must be 'sdpa' or 'flash', got {cfg['attn_backend']!r}")
    unsupported = {"class_token": False, "reg_tokens": 0, "float8_mode": None}
    bad = [k for k, v in unsupported.items() if cfg[k] != v]
    if cfg["sw"] not in (None, 0) and int(cfg["sw"]) > 0:
        bad.append("sw")  # sliding-window attention exists only in the flash-attn path
    if bad:
        raise ValueError(f"vitok: {bad} are not supported (the released models use none of them)")
    for side in ("encoder", "decoder"):
        w, h = int(cfg[f"{side}_width"]), int(cfg[f"{side}_heads"])
        if w % h or (w // h) % 4:
            raise ValueError(f"vitok: {side} width {w} / {h} heads must give a head dim divisible by 4")
    return cfg


def build_model(cfg: dict[str, Any]) -> ViTokAE:
    return ViTokAE(**{k: cfg[k] for k in ARCH_KEYS if k not in ("temporal_stride", "spatial_stride")},
                   use_layer_scale=bool(cfg["use_layer_scale"]), layer_scale_init=float(cfg["layer_scale_init"]),
                   encoder=bool(cfg["encoder"]), decoder=bool(cfg["decoder"]),
                   masked=cfg["attn_backend"] == "sdpa")


# ------------------------------------------------------------------------ checkpoints
def read_checkpoint(checkpoint: str | os.PathLike | Sequence[str | os.PathLike], *,
                    encoder: bool = True, decoder: bool = True) -> dict[str, torch.Tensor]:
    """The released layout: a directory with encoder.safetensors / decoder.safetensors, one file
    holding either or both halves, or a list of files. Keys of a half the model does not build
    (e.g. the decoder of an encoder-only tokenizer) are dropped."""
    if isinstance(checkpoint, (list, tuple)):
        paths = [os.fspath(p) for p in checkpoint]
    elif os.path.isdir(checkpoint):
        wanted = [("encoder.safetensors", encoder), ("decoder.safetensors", decoder)]
        paths = [os.path.join(checkpoint, name) for name, needed in wanted if needed]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise CheckpointError(f"vitok checkpoint directory {checkpoint} lacks {missing}")
    else:
        paths = [os.fspath(checkpoint)]
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        part = read_state_dict(path)
        overlap = sorted(set(part) & set(state))
        if overlap:
            raise CheckpointError(f"{path} repeats keys already loaded: {overlap[:8]}")
        state.update(part)
    drop = (() if encoder else ENCODER_PREFIXES) + (() if decoder else DECODER_PREFIXES)
    return {k: v for k, v in state.items() if not k.startswith(drop)} if drop else state


# ------------------------------------------------------------------------ the tokenizer
class ViTokTokenizer(Tokenizer):
    name = "vitok"
    vocab_size = 0
    groups = 1
    continuous = True
    input_range = (-1.0, 1.0)

    def __init__(self, model: ViTokAE, config: dict[str, Any], *, max_tokens: int = 256,
                 budget_resize: bool = True, **kwargs: Any) -> None:
        super().__init__(model, config, **kwargs)
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self.patch = self.downsample = int(config["spatial_stride"])
        self.max_tokens, self.budget_resize = int(max_tokens), bool(budget_resize)
        self.patch_nums = (math.isqrt(self.max_tokens),)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_tokens": self.max_tokens, "budget_resize": self.budget_resize}

    # ---------------------------------------------------------------- images of any size
    def preprocess_list(self, images: Sequence[Any], config: PreprocessConfig | None = None) -> list[torch.Tensor]:
        """Images -> list of (3, H, W) tensors in [-1, 1], each at its own size."""
        cfg = config or self.preprocess_config
        return [uint8_to_tensor(apply_policy(im, cfg)[None], self.input_range)[0] for im in images]

    def encode_list(self, images: Sequence[torch.Tensor], max_tokens: int | None = None) -> MultiScaleTokens:
        """(3, H_i, W_i) images of different sizes in one masked batch."""
        if not images:
            raise ValueError("no images to encode")
        for im in images:
            if im.ndim != 3 or im.shape[0] != 3:
                raise ValueError(f"encode_list expects (3, H, W) images, got {tuple(im.shape)}")
        budget = self.max_tokens if max_tokens is None else int(max_tokens)
        with torch.inference_mode(), self.autocast():
            return self._encode_images([im.to(self.device, torch.float32) for im in images], budget)

    def decode_list(self, tokens: MultiScaleTokens) -> list[torch.Tensor]:
        """Latents -> list of (3, orig_height_i, orig_width_i) images in [-1, 1] (not clamped)."""
        with torch.inference_mode(), self.autocast():
            return [im.float() for im in self._decode_images(tokens.to(self.device))]

    # ---------------------------------------------------------------- Tokenizer interface
    def _encode(self, x: torch.Tensor, patch_nums: tuple[int, ...], tile_size: int | None,
                overlap: int | None) -> MultiScaleTokens:
        if tile_size is not None or overlap is not None:
            raise ValueError("vitok does not tile: NaFlex encodes any size up to the token budget")
        if len(patch_nums) != 1:
            raise ValueError(f"vitok has one continuous scale; patch_nums=(n,) sets a budget of n*n "
                             f"tokens, got {patch_nums}")
        budget = self.max_tokens if patch_nums == self.patch_nums else patch_nums[0] ** 2
        return self._encode_images(list(x), budget)

    def _decode(self, tokens: MultiScaleTokens, upto: int) -> torch.Tensor:
        images = self._decode_images(tokens)
        if len({tuple(im.shape) for im in images}) > 1:
            raise ValueError("images of different sizes cannot be stacked; use decode_list()")
        return torch.stack(images)

    # ---------------------------------------------------------------- the maths
    def _encode_images(self, images: list[torch.Tensor], budget: int) -> MultiScaleTokens:
        sizes = {tuple(im.shape[-2:]) for im in images}
        if self.budget_resize:
            # enforce: the reference's closed form overshoots for very thin images (then crashes).
            images = [naflex.resize_to_token_budget(im, self.patch, budget, enforce=True) for im in images]
        counts = [math.prod(naflex.grid_size(*im.shape[-2:], self.patch)) for im in images]
        if max(counts) > budget:
            raise ValueError(f"an image needs {max(counts)} tokens, over the budget of {budget}"
                             + ("" if self.budget_resize else " (budget_resize is off)"))
        # Padding only to the longest image: a batch of one size runs without any mask.
        batch = naflex.patchify_batch(images, self.patch)
        z = self.model.encode(batch["patches"], batch["row_idx"], batch["col_idx"], batch["patch_mask"])
        rows, cols = batch["grid_rows"].tolist(), batch["grid_cols"].tolist()
        grid = z.new_zeros(len(images), max(rows), max(cols), z.shape[-1], dtype=torch.float32)
        for i, (r, c) in enumerate(zip(rows, cols)):
            grid[i, :r, :c] = z[i, :r * c].float().reshape(r, c, -1)
        return MultiScaleTokens(
            grids=[grid], patch_nums=(math.isqrt(budget),),
            image_size=next(iter(sizes)) if len(sizes) == 1 else None,
            padded_size=(max(rows) * self.patch, max(cols) * self.patch), continuous=True,
            extras={"patch": self.patch, "grid_rows": rows, "grid_cols": cols,
                    "orig_height": batch["orig_height"].tolist(),
                    "orig_width": batch["orig_width"].tolist()})

    def _decode_images(self, tokens: MultiScaleTokens) -> list[torch.Tensor]:
        patch = int(tokens.extras.get("patch", self.patch))
        if patch != self.patch:
            raise ValueError(f"latents of patch size {patch} cannot be decoded by a p={self.patch} model")
        grid = tokens.grids[0]
        rows, cols = tokens.extras["grid_rows"], tokens.extras["grid_cols"]
        n = max(r * c for r, c in zip(rows, cols))
        b, dev = grid.shape[0], grid.device
        z = grid.new_zeros(b, n, grid.shape[-1])
        mask = torch.zeros(b, n, dtype=torch.bool, device=dev)
        row_idx = torch.zeros(b, n, dtype=torch.long, device=dev)
        col_idx = torch.zeros(b, n, dtype=torch.long, device=dev)
        for i, (r, c) in enumerate(zip(rows, cols)):
            z[i, :r * c] = grid[i, :r, :c].reshape(r * c, -1)
            mask[i, :r * c] = True
            row_idx[i, :r * c] = torch.arange(r, device=dev).repeat_interleave(c)
            col_idx[i, :r * c] = torch.arange(c, device=dev).repeat(r)
        patches = self.model.decode(z, row_idx, col_idx, mask)
        as_long = lambda v: torch.as_tensor(v, dtype=torch.long)  # noqa: E731
        batch = {"patches": patches, "patch_mask": mask, "row_idx": row_idx, "col_idx": col_idx,
                 "grid_rows": as_long(rows), "grid_cols": as_long(cols),
                 "orig_height": as_long(tokens.extras["orig_height"]),
                 "orig_width": as_long(tokens.extras["orig_width"])}
        return naflex.postprocess(batch, patch)


# ------------------------------------------------------------------------ storage rows
@dataclass(frozen=True)
class LatentRow:
    """One image's latents as the job stores them."""

    latent: np.ndarray  # (grid_rows * grid_cols, c) float16, raster order
    grid_rows: int
    grid_cols: int
    orig_height: int    # content size in pixels inside the grid (after any budget resize)
    orig_width: int


def tokens_to_rows(tokens: MultiScaleTokens) -> list[LatentRow]:
    """vitok MultiScaleTokens -> one LatentRow per image (latents cast to float16)."""
    grid = tokens.grids[0].detach().float().cpu()
    ex = tokens.extras
    rows = []
    for i in range(grid.shape[0]):
        r, c = int(ex["grid_rows"][i]), int(ex["grid_cols"][i])
        latent = grid[i, :r, :c].reshape(r * c, -1).numpy().astype(np.float16)
        rows.append(LatentRow(latent, r, c, int(ex["orig_height"][i]), int(ex["orig_width"][i])))
    return rows


def rows_to_tokens(rows: Sequence[LatentRow], patch: int, max_tokens: int | None = None) -> MultiScaleTokens:
    """Inverse of `tokens_to_rows` (float16 latents come back as float32). `max_tokens`, the
    budget they were encoded with, only sets the informational `patch_nums`."""
    if not rows:
        raise ValueError("no latent rows")
    channels = {int(r.latent.shape[-1]) for r in rows}
    if len(channels) > 1:
        raise ValueError(f"rows have different channel counts {sorted(channels)}")
    for r in rows:
        if r.latent.shape != (r.grid_rows * r.grid_cols, next(iter(channels))):
            raise ValueError(f"latent shape {r.latent.shape} does not match grid {r.grid_rows}x{r.grid_cols}")
    hr, wc = max(r.grid_rows for r in rows), max(r.grid_cols for r in rows)
    grid = torch.zeros(len(rows), hr, wc, next(iter(channels)))
    for i, r in enumerate(rows):
        grid[i, :r.grid_rows, :r.grid_cols] = torch.from_numpy(
            r.latent.astype(np.float32)).reshape(r.grid_rows, r.grid_cols, -1)
    # The input size before the budget resize is not in a row; image_size is the content size.
    sizes = {(r.orig_height, r.orig_width) for r in rows}
    budget = max_tokens or max(r.latent.shape[0] for r in rows)
    return MultiScaleTokens(
        grids=[grid], patch_nums=(math.isqrt(budget),), image_size=next(iter(sizes)) if len(sizes) == 1 else None,
        padded_size=(hr * patch, wc * patch), continuous=True,
        extras={"patch": patch, "grid_rows": [r.grid_rows for r in rows],
                "grid_cols": [r.grid_cols for r in rows],
                "orig_height": [r.orig_height for r in rows], "orig_width": [r.orig_width for r in rows]})


# ------------------------------------------------------------------------ factory
@register_tokenizer("vitok")
def build_vitok(checkpoint: str | os.PathLike | Sequence[str] | None = None,
                config: dict[str, Any] | str | None = None, *, precision: str = "fp32",
                device: str = "cpu", preprocess: PreprocessConfig | None = None, seed: int = 0,
                max_tokens: int = 256, budget_resize: bool = True) -> ViTokTokenizer:
    """config: the reference AE kwargs (fixture meta.json `config.ae_kwargs`) or {"variant": ...}.

    checkpoint: a directory with encoder.safetensors/decoder.safetensors, one file, or a list.
    max_tokens: token budget per image; larger images are shrunk to it (bicubic, antialiased)
    unless budget_resize=False, which makes them an error instead.
    """
    cfg = resolve_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # deterministic random weights when no checkpoint is given
        model = build_model(cfg)
    if checkpoint is not None:
        state = read_checkpoint(checkpoint, encoder=cfg["encoder"], decoder=cfg["decoder"])
        try:
            load_into(model, state, source=f"vitok checkpoint {checkpoint}")
        except CheckpointError as exc:
            if not any(k.startswith(ENCODER_PREFIXES + DECODER_PREFIXES) for k in state):
                hint = "none of its keys is a ViTok key: it is a checkpoint of another family"
            else:
                arch = ", ".join(f"{k}={cfg[k]}" for k in ARCH_KEYS[:7] + ("channels_per_token",))
                hint = (f"the config builds {arch}; pass the config (or variant, e.g. "
                        f"'Ld4-Ld24/1x16x64') of the checkpoint's model")
            raise CheckpointError(f"{exc}\n  {hint}") from exc
    # Native size by default: NaFlex keeps the aspect ratio and the budget bounds the size.
    return ViTokTokenizer(model, cfg, max_tokens=max_tokens, budget_resize=budget_resize,
                          precision=precision, device=device,
                          preprocess_config=preprocess or PreprocessConfig(mode="native"))
