"""SVQVAE (tiled multi-scale VQ-VAE) and the FlexVAR tokenizer: one model family, two layouts.

Tokens of scale p are the l2-nearest codes of the continuous latent resized to that scale's grid;
scales are independent (no residual), so decoding scale k needs only grid k.

  svqvae   f8, RGB in [0, 1], tiled: the image is reflect-padded and cut into tile_size tiles with
           `overlap`; tile latents are Hann-blended into one latent, which is resized per scale
           (p = tile_size/8 is full resolution); each scale decodes tile by tile with Hann-blended
           pixels. Geometry in `svqvae_tiling`.
  flexvar  f16, RGB in [-1, 1], one encoder pass over the whole image; scale n is an n x n grid
           (the longer side is n for non-square images). tile_size/overlap switch tiling on.

`reference_quirks=True` reproduces the reference bit for bit (conformance); the default fixes its
black top/left edge, the crash on sides <= overlap and p = 1 collapsing multi-tile images.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer, merge_config, register_tokenizer
from pipeline.tokenizers.checkpoints import CheckpointError, load_into, read_state_dict
from pipeline.tokenizers.llamagen_blocks import LlamaGenVQConfig, LlamaGenVQModel
from pipeline.images import PreprocessConfig
from pipeline.tokenizers.svqvae_tiling import (
    ScaleGeometry, decode_plan, fit_output, plan_canvas, reflect_pad, resize_latent, tiled_scale,
    whole_scale,
)
from pipeline.tokenizers.tiling import TilePlan, blend, crop_tiles

# Released models. SVQVAE: `ScalableVQVAE.load()`'s model_args (the ModelArgs dataclass defaults
# describe a different model) with the Encoder/Decoder default ch=128. FlexVAR: `VQ-16`, whose
# codebook really has 8912 rows.
SVQVAE_DEFAULTS: dict[str, Any] = {
    "codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True,
    "codebook_show_usage": True, "commit_loss_beta": 0.25, "entropy_loss_ratio": 0.0,
    "encoder_ch_mult": [1, 2, 2, 4], "decoder_ch_mult": [1, 2, 2, 4], "z_channels": 32,
    "dropout_p": 0.0, "ch": 128,
}
FLEXVAR_DEFAULTS: dict[str, Any] = {
    **SVQVAE_DEFAULTS, "codebook_size": 8912, "codebook_embed_dim": 32,
    "encoder_ch_mult": [1, 1, 2, 2, 4], "decoder_ch_mult": [1, 1, 2, 2, 4], "z_channels": 256,
}

# `align=True`: the training statistics (RGB in [0, 1]) the input batch is standardised onto.
TRAIN_MEAN = (0.5351199507713318, 0.5217390656471252, 0.4665282666683197)
TRAIN_STD = (0.28029370307922363, 0.27318093180656433, 0.28354412317276)
ALIGN_EPS = 1e-6


class SVQVAETokenizer(Tokenizer):
    """Both families; `tile_size=0` means one encoder pass over the whole image."""

    supports_tiling = True

    def __init__(self, model: LlamaGenVQModel, config: dict[str, Any], *, name: str,
                 input_range: tuple[float, float], patch_nums: Sequence[int], tile_size: int,
                 overlap: int, reference_quirks: bool = False, align: bool = False,
                 tile_batch: int = 4, **kwargs: Any) -> None:
        super().__init__(model, config, **kwargs)
        self.name = name
        self.input_range = input_range
        self.vocab_size = model.cfg.codebook_size
        self.downsample = model.cfg.downsample
        self.patch_nums = tuple(sorted({int(p) for p in patch_nums}))
        self.tile_size, self.overlap = int(tile_size), int(overlap)
        self.reference_quirks = bool(reference_quirks)
        if align and input_range != (0.0, 1.0):
            raise ValueError("align=True maps onto SVQVAE's [0, 1] training statistics; "
                             "it needs input range [0, 1]")
        self.align = bool(align)
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        self.tile_batch = int(tile_batch)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tile_size": self.tile_size, "overlap": self.overlap,
                "reference_quirks": self.reference_quirks, "align": self.align}

    # ---------------------------------------------------------------- encode
    def _encode(self, x: torch.Tensor, patch_nums: tuple[int, ...], tile_size: int | None,
                overlap: int | None) -> MultiScaleTokens:
        patch_nums = tuple(sorted(set(patch_nums)))
        if not patch_nums:
            raise ValueError("patch_nums is empty")
        tile = self.tile_size if tile_size is None else int(tile_size)
        ov = self.overlap if overlap is None else int(overlap)
        h, w = x.shape[-2:]
        ds = self.downsample
        align_stats = _batch_stats(x) if self.align else None
        latent, plan = self._latent_canvas(x, tile, ov, align_stats)
        if plan is not None:
            geometries = [tiled_scale(p, plan, ds, quirks=self.reference_quirks) for p in patch_nums]
        else:
            geometries = [whole_scale(p, tuple(latent.shape[-2:]), (h, w)) for p in patch_nums]
        grids = [self.model.quantize(resize_latent(latent, g)).indices for g in geometries]
        extras = {"tile_size": tile, "overlap": ov, "downsample": ds,
                  "reference_quirks": self.reference_quirks, "geometries": geometries,
                  "align_stats": align_stats}
        return MultiScaleTokens(grids=grids, patch_nums=patch_nums, image_size=(h, w),
                                padded_size=(latent.shape[-2] * ds, latent.shape[-1] * ds), extras=extras)

    def encode_latent(self, x: torch.Tensor, tile_size: int | None = None,
                      overlap: int | None = None) -> torch.Tensor:
        """The continuous latent of the padded canvas (B, C, H_pad/ds, W_pad/ds), float32: the
        Hann-blended tile latents, or one encoder pass when tile_size is 0 (for inspection)."""
        tile = self.tile_size if tile_size is None else int(tile_size)
        ov = self.overlap if overlap is None else int(overlap)
        x = x.to(self.device, torch.float32)
        with torch.inference_mode(), self.autocast():
            return self._latent_canvas(x, tile, ov, _batch_stats(x) if self.align else None)[0]

    def _latent_canvas(self, x: torch.Tensor, tile: int, overlap: int,
                       align_stats: tuple[torch.Tensor, torch.Tensor] | None
                       ) -> tuple[torch.Tensor, TilePlan | None]:
        if align_stats is not None:
            x = _align(x, *align_stats)
        h, w = x.shape[-2:]
        if tile:
            plan = plan_canvas(h, w, tile, overlap, self.downsample, quirks=self.reference_quirks)
            return self._encode_tiled(self._pad(x, plan.padded_height, plan.padded_width), plan), plan
        ds = self.downsample
        return self.model.encode_latent(self._pad(x, -(-h // ds) * ds, -(-w // ds) * ds)), None

    def _pad(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.reference_quirks and (height - h >= h or width - w >= w):
            raise ValueError(
                f"reflect padding {tuple(x.shape[-2:])} to {(height, width)} needs a pad larger than the "
                f"image, which the reference cannot do; use reference_quirks=False")
        return reflect_pad(x, height, width)

    def _encode_tiled(self, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
        """Hann-blended continuous latent (B, C, H_pad/ds, W_pad/ds), float32."""
        tiles = crop_tiles(x, plan)
        latents: list[torch.Tensor] = []
        for i in range(0, len(tiles), self.tile_batch):
            chunk = tiles[i:i + self.tile_batch]
            latents.extend(self.model.encode_latent(torch.cat(chunk)).chunk(len(chunk)))
        return blend(latents, plan.scaled(self.downsample), convention=self._convention())

    def _convention(self) -> str:
        return "reference" if self.reference_quirks else "fixed"

    # ---------------------------------------------------------------- decode
    def _decode(self, tokens: MultiScaleTokens, upto: int) -> torch.Tensor:
        """The image of scale `upto` (scales are independent), at that scale's resolution:
        round(p/t * H) x round(p/t * W) tiled, grid * ds cropped to the image otherwise."""
        k = upto - 1
        geometry = self._geometry(tokens, k)
        indices = tokens.grids[k]
        if tuple(indices.shape[1:3]) != geometry.grid:
            raise ValueError(f"scale {k}: grid {tuple(indices.shape[1:3])} does not match the "
                             f"geometry {geometry.grid} of patch_num {geometry.patch_num}")
        ds = self.downsample
        lo, hi = self.input_range
        if geometry.tile:
            latent_plan, pixel_plan = decode_plan(geometry, ds)
            pixels = self._decode_tiles(indices, latent_plan)
            img = blend(pixels, pixel_plan, convention=self._convention()).clamp_(lo, hi)
            if self.reference_quirks and tokens.padded_size is not None:
                img = img[:, :, :tokens.padded_size[0], :tokens.padded_size[1]]
        else:
            img = self.model.decode_codes(indices).clamp_(lo, hi)
            tile = tokens.extras.get("tile_size", self.tile_size)
            if tile and tokens.padded_size is not None:
                # A coarse scale of a tiled canvas, decoded whole: bring it to the scale's size.
                scale = geometry.patch_num * ds / tile
                size = (round(tokens.padded_size[0] * scale), round(tokens.padded_size[1] * scale))
                img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
        stats = tokens.extras.get("align_stats")
        if stats is not None:
            img = _unalign(img, *stats)
        return fit_output(img, geometry.out_size, fill_edge=not self.reference_quirks).clamp_(lo, hi)

    def _decode_tiles(self, indices: torch.Tensor, plan: TilePlan) -> list[torch.Tensor]:
        p = plan.tile
        tiles = [indices[:, y:y + p, x:x + p] for y, x in plan.tiles]
        pixels: list[torch.Tensor] = []
        for i in range(0, len(tiles), self.tile_batch):
            chunk = tiles[i:i + self.tile_batch]
            pixels.extend(self.model.decode_codes(torch.cat(chunk)).chunk(len(chunk)))
        return pixels

    def _geometry(self, tokens: MultiScaleTokens, k: int) -> ScaleGeometry:
        """From the encode's extras, or recomputed (tokens read back from storage carry only
        the grids, image_size and padded_size)."""
        stored = tokens.extras.get("geometries")
        if stored:
            return stored[k]
        if tokens.image_size is None:
            raise ValueError("tokens without extras need image_size to be decoded")
        h, w = tokens.image_size
        p = tokens.patch_nums[k]
        tile = tokens.extras.get("tile_size", self.tile_size)
        if tile:
            plan = plan_canvas(h, w, tile, tokens.extras.get("overlap", self.overlap), self.downsample,
                               quirks=self.reference_quirks)
            return tiled_scale(p, plan, self.downsample, quirks=self.reference_quirks)
        ds = self.downsample
        ph, pw = tokens.padded_size or (-(-h // ds) * ds, -(-w // ds) * ds)
        return whole_scale(p, (ph // ds, pw // ds), (h, w))


def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), unbiased=False, keepdim=True)


def _train_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(TRAIN_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(TRAIN_STD, device=x.device).view(1, 3, 1, 1)
    return mean, std


def _align(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    mean, std = _train_stats(x)
    return (x - mu) / (sigma + ALIGN_EPS) * std + mean


def _unalign(img: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    mean, std = _train_stats(img)
    return (img - mean) / (std + ALIGN_EPS) * sigma.to(img.device) + mu.to(img.device)


# ------------------------------------------------------------------------ building
def build_model(config: dict[str, Any], seed: int = 0) -> LlamaGenVQModel:
    """The module for `config`, with seeded random weights (replaced when a checkpoint loads)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaGenVQModel(LlamaGenVQConfig(**config))


def load_checkpoint(model: LlamaGenVQModel, checkpoint: str, family: str) -> None:
    sd = read_state_dict(checkpoint)
    try:
        load_into(model, sd, source=checkpoint)
    except CheckpointError as exc:
        hint = _layout_hint(sd)
        raise CheckpointError(f"{family}: {exc}" + (f"\n  hint: {hint}" if hint else "")) from None


def _layout_hint(sd: dict[str, torch.Tensor]) -> str:
    """Name the layout a mismatching checkpoint seems to have."""
    if any(k.startswith("encoder.down.") for k in sd):
        return "taming/LDM key layout (encoder.down.*), e.g. a VAR or GQ checkpoint"
    emb = sd.get("quantize.embedding.weight")
    if emb is None or emb.ndim != 2:
        return ""
    levels = len({k.split(".")[2] for k in sd if k.startswith("encoder.conv_blocks.")})
    width = sd.get("encoder.conv_in.weight")
    ch = int(width.shape[0]) if width is not None else "?"
    return (f"this looks like a LlamaGen-style VQ-VAE with a {emb.shape[0]}x{emb.shape[1]} codebook, "
            f"{levels} encoder levels (f{2 ** (levels - 1)}) and ch={ch}; 'svqvae' defaults to "
            f"16384x8/f8/ch=128, 'flexvar' to 8912x32/f16/ch=128; pass the matching config")


def _factory(name: str, defaults: dict[str, Any], input_range: tuple[float, float],
             default_patch_nums: tuple[int, ...], tile_size: int, overlap: int,
             default_preprocess: PreprocessConfig):
    def build(checkpoint: str | None = None, config: dict[str, Any] | None = None, precision: str = "fp32",
              device: str = "cpu", preprocess: PreprocessConfig | None = None, **opts: Any) -> SVQVAETokenizer:
        cfg = merge_config(defaults, config, name)
        model = build_model(cfg)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, name)
        known = {"patch_nums", "tile_size", "overlap", "reference_quirks", "align", "tile_batch"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"{name}: unknown options {unknown}; known: {sorted(known)}")
        options = {"patch_nums": default_patch_nums, "tile_size": tile_size, "overlap": overlap, **opts}
        return SVQVAETokenizer(model, cfg, name=name, input_range=input_range,
                               preprocess_config=preprocess or default_preprocess, precision=precision,
                               device=device, **options)
    return build


# SVQVAE README: tile 512 / overlap 256 and scales 4..64 (64 = full resolution at tile 512).
register_tokenizer("svqvae")(_factory(
    "svqvae", SVQVAE_DEFAULTS, (0.0, 1.0), (4, 8, 16, 32, 64), 512, 256,
    PreprocessConfig(mode="native", max_side=2048)))
# FlexVAR: 256x256 ImageNet training, VAR's default schedule 1..16 (16 = full resolution).
register_tokenizer("flexvar")(_factory(
    "flexvar", FLEXVAR_DEFAULTS, (-1.0, 1.0), (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 0, 0,
    PreprocessConfig(mode="center-crop", size=256)))
