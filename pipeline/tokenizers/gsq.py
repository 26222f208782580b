"""GSQ — Grouped Spherical Quantization ("Scaling Image Tokenizers with GSQ", arXiv 2412.02632).

The released `HelmholtzAI-FZJ/GSQ-F8-*` checkpoints are flex_gen `FlexTokenizer`s: a MagViT-style
conv encoder/decoder (`flex_blocks`) around a `vq` (ungrouped) or `gvq` (G groups sharing one
codebook) quantiser with l2-normalised search and raw-row decoding (`quantizers.spherical`).
`checkpoint.pt` is a torch.save dict {model_state_dict, config (pickled kwargs)}: only the tensors
are read (weights_only); the constructor arguments come from `config`, i.e. the sibling
`config.yaml`'s model kwargs, never from the pickle.

    tok = load_tokenizer("gsq", checkpoint="checkpoint.pt", config=kwargs_from_config_yaml)
    tokens = tok.encode(tok.preprocess(images))   # one scale: (B, h, w) for vq, (B, h, w, G) for gvq
    images = tok.decode(tokens)                    # decoder on the raw codebook rows, not clamped

`config` = FlexTokenizer's constructor kwargs; missing ones take the released GSQ-F8-D64-G16-V8k
values. `quantizer_config`, when given, replaces the default one as a whole (a `vq` config has no
`num_group`); its missing entries take the reference quantiser classes' own defaults.

Single-scale family: one scale whose grid is the whole latent; canvas padded bottom/right to a
multiple of 8 (reflect), decode crops back. No tiling: GroupNorm and the decoder's adaptive norms
use whole-image statistics. Codebook usage / perplexity of the codes: `pipeline.tokenizers.metrics`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from pipeline.tokenizers.base import merge_config, register_tokenizer
from pipeline.tokenizers.checkpoints import CONTAINER_KEYS, load_into, read_state_dict
from pipeline.tokenizers.flex_blocks import Decoder, Encoder
from pipeline.images import PreprocessConfig
from pipeline.tokenizers.quantizers.spherical import SphericalQuantizer
from pipeline.tokenizers.single_scale import SingleScaleTokenizer

RELEASED_CONFIG: dict[str, Any] = {  # GSQ-F8-D64-G16-V8k config.yaml + FlexTokenizer defaults
    "input_channels": 3, "hidden_channels": 128, "channel_multipliers": [1, 2, 2, 4],
    "encoder_layer_configs": [2, 2, 2, 2, 2], "decoder_layer_configs": [2, 2, 2, 2, 2],
    "mid_block_attn": False, "attention_resolutions": [], "embedding_dim": 64,
    "use_adaptive_norm": True, "use_learnable_up_down_sample": True,
    "residual_conv_kernel_size": 3, "input_conv_kernel_size": 3, "output_conv_kernel_size": 3,
    "dropout_probability": 0.0, "quantizer_aux_loss_weight": 1.0,
    "quantizer_config": {"quantize_type": "gvq", "embed_dim": 64, "num_embed": 8192,
                         "commitment_loss_weight": 0.25, "use_l2_norm": True, "use_uniform_init": False,
                         "num_group": 16},
}
# The reference quantiser classes' defaults (what a config.yaml that omits a key gets).
QUANTIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "vq": {"quantize_type": "vq", "num_embed": None, "embed_dim": None, "commitment_loss_weight": 0.25,
           "use_uniform_init": True, "use_l1_norm": False, "use_l2_norm": False, "lambda_tcr_loss": 0,
           "norm_distirbution_radius": 1.0, "lambda_entropy_loss": 0, "entropy_loss_type": "softmax",
           "entropy_temperature": 1.0},
    "gvq": {"quantize_type": "gvq", "num_embed": None, "embed_dim": None, "num_group": 1,
            "use_uniform_init": False, "commitment_loss_weight": 0.25, "use_l2_norm": False,
            "use_l1_norm": False, "force_1d_clip": False},
}


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    config = dict(config or {})
    cfg = merge_config(copy.deepcopy(RELEASED_CONFIG), config, "gsq")
    cfg["quantizer_config"] = resolve_quantizer_config(cfg["quantizer_config"])
    refused = {"mid_block_attn": False, "attention_resolutions": [], "use_adaptive_norm": True,
               "use_learnable_up_down_sample": True}
    for key, released in refused.items():
        value = list(cfg[key]) if isinstance(cfg[key], (list, tuple)) else cfg[key]
        if value != released:
            raise ValueError(f"gsq: {key}={cfg[key]!r} is not supported (released GSQ models use {released!r})")
    if cfg["quantizer_config"]["embed_dim"] != cfg["embedding_dim"]:
        raise ValueError(f"gsq: quantizer_config.embed_dim {cfg['quantizer_config']['embed_dim']} differs "
                         f"from embedding_dim {cfg['embedding_dim']}")
    return cfg


def resolve_quantizer_config(qcfg: dict[str, Any]) -> dict[str, Any]:
    kind = qcfg.get("quantize_type", "vq")
    if kind not in QUANTIZER_DEFAULTS:
        raise ValueError(f"gsq: quantize_type {kind!r} is not supported; released checkpoints use "
                         f"{sorted(QUANTIZER_DEFAULTS)} (the 'gsq' class breaks ties at random)")
    out = merge_config(QUANTIZER_DEFAULTS[kind], qcfg, f"gsq quantizer_config ({kind})")
    for key in ("num_embed", "embed_dim"):
        if out[key] is None:
            raise ValueError(f"gsq: quantizer_config needs {key!r}")
    if out.get("force_1d_clip") and out["use_uniform_init"] and not (out["use_l2_norm"] or out["use_l1_norm"]):
        raise ValueError("gsq: force_1d_clip (codebook clamped to [-1, 1]) is not supported")
    return out


def norm_order(qcfg: dict[str, Any]) -> int | None:
    """The reference checks l1 before l2."""
    return 1 if qcfg["use_l1_norm"] else 2 if qcfg["use_l2_norm"] else None


class FlexTokenizerModel(nn.Module):
    """encoder -> quantizers -> decoder, with the reference attribute names (state-dict keys)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        shared = dict(hidden_channels=cfg["hidden_channels"], embedding_dim=cfg["embedding_dim"],
                      channel_multipliers=tuple(cfg["channel_multipliers"]),
                      kernel_size=cfg["residual_conv_kernel_size"], dropout=cfg["dropout_probability"])
        self.encoder = Encoder(input_channels=cfg["input_channels"], layer_configs=cfg["encoder_layer_configs"],
                               input_kernel_size=cfg["input_conv_kernel_size"], **shared)
        self.decoder = Decoder(output_channels=cfg["input_channels"], layer_configs=cfg["decoder_layer_configs"],
                               output_kernel_size=cfg["output_conv_kernel_size"], **shared)
        q = cfg["quantizer_config"]
        self.quantizers = SphericalQuantizer(q["num_embed"], q["embed_dim"],
                                             q["num_group"] if q["quantize_type"] == "gvq" else None,
                                             norm_p=norm_order(q))


class GSQTokenizer(SingleScaleTokenizer):
    name = "gsq"

    def __init__(self, model: FlexTokenizerModel, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(model, config, **kwargs)
        self.vocab_size = self.quantizer.codebook_size
        self.groups = self.quantizer.groups
        self.downsample = 2 ** (len(config["channel_multipliers"]) - 1)
        self.patch_nums = (self.preprocess_config.size // self.downsample,)

    @property
    def quantizer(self) -> SphericalQuantizer:
        return self.model.quantizers


@register_tokenizer("gsq")
def build_gsq(checkpoint: str | None = None, config: dict[str, Any] | None = None, *,
              precision: str = "fp32", device: str = "cpu", preprocess: PreprocessConfig | None = None,
              seed: int = 0) -> GSQTokenizer:
    cfg = resolve_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # deterministic random weights when no checkpoint is given
        model = FlexTokenizerModel(cfg)
    if checkpoint is not None:
        sd = read_state_dict(checkpoint, prefer=("model_state_dict",) + CONTAINER_KEYS)
        load_into(model, sd, source=str(checkpoint))
    preprocess = preprocess or PreprocessConfig(mode="center-crop", size=256, resize_ratio=1.0)
    return GSQTokenizer(model, cfg, precision=precision, device=device, preprocess_config=preprocess)
