"""GQ — Gaussian Quant ("Vector Quantization using Gaussian VAE", arXiv 2512.06609).

A Gaussian VAE (SGM-style conv encoder giving [mu ; logvar], no quant_conv) whose posterior is
turned into codes of a fixed scrambled-Sobol prior codebook (`quantizers.gaussian`). Released
model: `xutongda/GQModel` -> `sd3unet_gq_0.25.ckpt` (Lightning checkpoint, weights under
`state_dict`), f8, 65536 codes of dimension 16, one code per latent position.

    tok = load_tokenizer("gq", checkpoint="sd3unet_gq_0.25.ckpt")
    tokens = tok.encode(tok.preprocess(images))     # one scale: grid (B, H/8, W/8)
    images = tok.decode(tokens)                      # [-1, 1] nominal, not clamped (as the reference)

`config` is the reference's constructor arguments in two sections, as a recorded run lists them:
{"encoder_decoder_kwargs": {ch, ch_mult, ...}, "regulariser_kwargs": {n_samples, group, seed, ...}};
missing entries take the released values. Other top-level entries (descriptions of a run such as
`input_hw` or `min_margin`) are not constructor arguments and are ignored; a constructor argument
placed at the top level by mistake is an error.

Single-scale family: `encode` returns MultiScaleTokens with exactly one scale whose grid is
(B, h, w) for one code per position (group == z_channels) and (B, h, w, G) for G = z_channels /
group codes per position (the 0.50 / 1.00 bit-rate configs). The canvas is padded bottom/right to
a multiple of 8 (reflect) and `decode` crops back to the image size. No tiling: the encoder's
attention and GroupNorm see the whole canvas.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from pipeline.tokenizers.base import merge_config, register_tokenizer
from pipeline.tokenizers.checkpoints import CheckpointError, load_into, read_state_dict
from pipeline.tokenizers.ldm_blocks import Decoder, Encoder
from pipeline.images import PreprocessConfig
from pipeline.tokenizers.quantizers.gaussian import GaussianQuantizer
from pipeline.tokenizers.single_scale import SingleScaleTokenizer

ENCODER_DECODER_KWARGS: dict[str, Any] = {
    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [32],
    "resolution": 256, "z_channels": 16, "double_z": True, "in_channels": 3, "out_ch": 3,
    "dropout": 0.0, "attn_type": "vanilla",
    # reference arguments the released config leaves at their defaults
    "resamp_with_conv": True, "use_linear_attn": False, "padding_mode": "zeros",
    "give_pre_end": False, "tanh_out": False,
}
REGULARISER_KWARGS: dict[str, Any] = {
    "format": "bchw", "n_samples": 65536, "group": 16, "seed": 42, "beta": 1.0,
    "logvar_range": [-30.0, 20.0], "backend": "torch",
    # training-only arguments (the target-divergence schedule); accepted, unused at inference
    "tolerance": 0.5, "lam_factor": 1.01,
}
SECTIONS = {"encoder_decoder_kwargs": ENCODER_DECODER_KWARGS, "regulariser_kwargs": REGULARISER_KWARGS}
# Reference values whose other settings would change the computation; refused, not ignored.
SUPPORTED = {
    "attn_type": ("vanilla", "vanilla-xformers"), "use_linear_attn": (False,), "resamp_with_conv": (True,),
    "padding_mode": ("zeros",), "give_pre_end": (False,), "double_z": (True,),
    "format": ("bchw",), "backend": ("torch", "cuda"),
}
WEIGHT_PREFIXES = ("encoder.", "decoder.")


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Released defaults overridden by `config` (see the module docstring for its shape)."""
    config = dict(config or {})
    misplaced = sorted(k for k in config if any(k in section for section in SECTIONS.values()))
    if misplaced:
        raise ValueError(f"gq: {misplaced} belong inside 'encoder_decoder_kwargs' or 'regulariser_kwargs', "
                         "not at the top level of the config")
    unknown_sections = sorted(k for k in config if k.endswith("_kwargs") and k not in SECTIONS)
    if unknown_sections:
        raise ValueError(f"gq: unknown config sections {unknown_sections}; known: {sorted(SECTIONS)}")
    cfg = {name: merge_config(copy.deepcopy(defaults), config.get(name), f"gq {name}")
           for name, defaults in SECTIONS.items()}
    for section in cfg.values():
        for key, allowed in SUPPORTED.items():
            if key in section and section[key] not in allowed:
                raise ValueError(f"gq: {key}={section[key]!r} is not supported (supported: {allowed})")
    arch, reg = cfg["encoder_decoder_kwargs"], cfg["regulariser_kwargs"]
    if arch["z_channels"] % reg["group"]:
        raise ValueError(f"gq: z_channels {arch['z_channels']} is not a multiple of the code dimension "
                         f"group={reg['group']}")
    return cfg


class GQModel(nn.Module):
    """encoder -> regularization (the Gaussian quantiser, eval behaviour) -> decoder."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        a, r = cfg["encoder_decoder_kwargs"], cfg["regulariser_kwargs"]
        shared = dict(ch=a["ch"], ch_mult=tuple(a["ch_mult"]), num_res_blocks=a["num_res_blocks"],
                      attn_resolutions=tuple(a["attn_resolutions"]), resolution=a["resolution"],
                      z_channels=a["z_channels"], dropout=a["dropout"])
        self.encoder = Encoder(in_channels=a["in_channels"], double_z=True, **shared)
        self.decoder = Decoder(out_ch=a["out_ch"], tanh_out=a["tanh_out"], **shared)
        self.regularization = GaussianQuantizer(
            n_samples=r["n_samples"], dim=r["group"], seed=r["seed"], beta=r["beta"],
            logvar_range=tuple(r["logvar_range"]), layout="strided")


class GQTokenizer(SingleScaleTokenizer):
    name = "gq"

    def __init__(self, model: GQModel, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(model, config, **kwargs)
        arch, reg = config["encoder_decoder_kwargs"], config["regulariser_kwargs"]
        self.vocab_size = int(reg["n_samples"])
        self.groups = int(arch["z_channels"]) // int(reg["group"])
        self.downsample = 2 ** (len(arch["ch_mult"]) - 1)
        self.patch_nums = (self.preprocess_config.size // self.downsample,)

    @property
    def quantizer(self) -> GaussianQuantizer:
        return self.model.regularization

    def codes_to_grid(self, indices: torch.Tensor) -> torch.Tensor:
        # The quantiser always answers (B, h, w, G); one group is stored as a plain (B, h, w) grid.
        return indices[..., 0] if self.groups == 1 else indices

    def grid_to_codes(self, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.long()
        indices = grid[..., None] if grid.ndim == 3 else grid
        if indices.shape[-1] != self.groups:
            raise ValueError(f"gq: expected {self.groups} codes per position, got grid {tuple(grid.shape)}")
        return indices

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder output [mu ; logvar] (B, 2c, H/8, W/8), logvar not yet clamped (float32)."""
        return self.encode_latent(x)


def load_gq_weights(model: GQModel, checkpoint: str) -> None:
    """Load the encoder/decoder tensors of a GQ checkpoint strictly; training-only entries of the
    Lightning checkpoint (`loss.*`: discriminator, LPIPS, learned logvar) are dropped first."""
    sd = read_state_dict(checkpoint)
    weights = {k: v for k, v in sd.items() if k.startswith(WEIGHT_PREFIXES)}
    if not weights:
        sample = ", ".join(sorted(sd)[:8])
        raise CheckpointError(f"{checkpoint} has no encoder./decoder. tensors, so it is not a GQ "
                              f"checkpoint ({len(sd)} tensors, e.g. {sample})")
    load_into(model, weights, source=str(checkpoint))


@register_tokenizer("gq")
def build_gq(checkpoint: str | None = None, config: dict[str, Any] | None = None, *,
             precision: str = "fp32", device: str = "cpu", preprocess: PreprocessConfig | None = None,
             seed: int = 0) -> GQTokenizer:
    cfg = resolve_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # deterministic random weights when no checkpoint is given
        model = GQModel(cfg)
    if checkpoint is not None:
        load_gq_weights(model, checkpoint)
    # Training transform: Resize(256) + CenterCrop(256) of the shorter side.
    preprocess = preprocess or PreprocessConfig(mode="center-crop", size=cfg["encoder_decoder_kwargs"]["resolution"],
                                                resize_ratio=1.0)
    return GQTokenizer(model, cfg, precision=precision, device=device, preprocess_config=preprocess)
