"""VAR's multi-scale residual VQ-VAE (FoundationVision/VAR `VQVAE`), official state-dict layout.

`load_tokenizer("var-vqvae", checkpoint="vae_ch160v4096z32.pth")` builds the released model
(ch 160, 4096 codes, 32 latent channels, scales 1..16 at 256 px). `config` takes the reference
constructor's own arguments; missing keys take the released values.

Beyond the reference (which asserts a 16x16 latent): any image size the conv net accepts is
encoded (the canvas is padded bottom/right to a multiple of 16 and the scale grids follow the
latent's aspect ratio), and `tile_size`/`overlap` encode images too large for one pass by
blending the continuous latents of overlapping tiles before quantisation (overlap defaults to a
quarter of the tile).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from pipeline.tokenizers import tiling
from pipeline.tokenizers.base import MultiScaleTokens, Tokenizer, merge_config, register_tokenizer
from pipeline.tokenizers.blocks import Decoder, Encoder
from pipeline.tokenizers.checkpoints import load_into, read_state_dict
from pipeline.images import PreprocessConfig
from pipeline.tokenizers.quantizers.residual import MultiScaleResidualQuantizer

RELEASED_CONFIG: dict[str, Any] = {
    "vocab_size": 4096,
    "z_channels": 32,
    "ch": 160,
    "dropout": 0.0,
    "beta": 0.25,
    "using_znorm": False,
    "quant_conv_ks": 3,
    "quant_resi": 0.5,
    "share_quant_resi": 4,
    "default_qresi_counts": 0,
    "v_patch_nums": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    "test_mode": True,
}
# Hard-wired inside the reference class (not constructor arguments). scaletok accepts them as two
# extra config keys, `ch_mult` and `num_res_blocks`, for small tokenizers of our own (the embedded
# default is an f8 model); when absent the reference's values apply and the config, fingerprint
# and state-dict layout are exactly the reference's.
CH_MULT = (1, 1, 2, 2, 4)
NUM_RES_BLOCKS = 2
DOWNSAMPLE = 2 ** (len(CH_MULT) - 1)
ARCH_KEYS = ("ch_mult", "num_res_blocks")


class VQVAE(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in cfg.get("ch_mult", CH_MULT))
        arch = dict(ch=cfg["ch"], ch_mult=ch_mult, num_res_blocks=int(cfg.get("num_res_blocks", NUM_RES_BLOCKS)),
                    dropout=cfg["dropout"],
                    in_channels=3, z_channels=cfg["z_channels"], using_sa=True, using_mid_sa=True)
        self.encoder = Encoder(double_z=False, **arch)
        self.decoder = Decoder(**arch)
        self.quantize = MultiScaleResidualQuantizer(
            cfg["vocab_size"], cfg["z_channels"], cfg["v_patch_nums"], using_znorm=cfg["using_znorm"],
            beta=cfg["beta"], quant_resi=cfg["quant_resi"], share_quant_resi=cfg["share_quant_resi"])
        ks = cfg["quant_conv_ks"]
        self.quant_conv = nn.Conv2d(cfg["z_channels"], cfg["z_channels"], ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg["z_channels"], cfg["z_channels"], ks, padding=ks // 2)
        self.downsample = 2 ** (len(ch_mult) - 1)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), H, W multiples of the downsample (16) -> latent f (B, Cvae, H/16, W/16)."""
        return self.quant_conv(self.encoder(x))

    def fhat_to_image(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)


class VarVQVAETokenizer(Tokenizer):
    name = "var-vqvae"
    downsample = DOWNSAMPLE
    input_range = (-1.0, 1.0)
    supports_tiling = True

    def __init__(self, model: VQVAE, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(model, config, **kwargs)
        self.vocab_size = int(config["vocab_size"])
        self.patch_nums = tuple(int(p) for p in config["v_patch_nums"])
        self.latent_channels = int(config["z_channels"])
        self.tile_convention = "fixed"
        self.downsample = model.downsample

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.model.quantize

    # ---------------------------------------------------------------- encode
    def _encode(self, x: torch.Tensor, patch_nums: tuple[int, ...], tile_size: int | None,
                overlap: int | None) -> MultiScaleTokens:
        b, _, h, w = x.shape
        if tile_size:
            ds = self.downsample
            ov = tiling.default_overlap(tile_size, ds) if overlap is None else int(overlap)
            plan = tiling.plan_tiles(h, w, tile_size, ov, multiple_of=ds)
            canvas = tiling.pad_to(x, plan.padded_height, plan.padded_width)
            latents = [self.model.encode_latent(t).float() for t in tiling.crop_tiles(canvas, plan)]
            f = tiling.blend(latents, plan.scaled(ds), convention=self.tile_convention)
            padded = (plan.padded_height, plan.padded_width)
        else:
            ds = self.downsample
            padded = (-(-h // ds) * ds, -(-w // ds) * ds)
            f = self.model.encode_latent(tiling.pad_to(x, *padded)).float()
        out = self.quantizer(f, patch_nums)
        return MultiScaleTokens(grids=out.indices, patch_nums=patch_nums, image_size=(h, w), padded_size=padded)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous latent f = quant_conv(encoder(x)) (float32), for inspection and tests."""
        with torch.inference_mode(), self.autocast():
            return self.model.encode_latent(x.to(self.device)).float()

    # ---------------------------------------------------------------- decode
    def _decode(self, tokens: MultiScaleTokens, upto: int) -> torch.Tensor:
        f_hat = self.indices_to_fhat(tokens.grids[:upto], num_scales=len(tokens.grids),
                                     latent_size=tuple(tokens.grids[-1].shape[1:3]))
        image = self.model.fhat_to_image(f_hat)
        if tokens.image_size is not None:
            image = image[:, :, :tokens.image_size[0], :tokens.image_size[1]]
        return image

    def indices_to_fhat(self, grids: Sequence[torch.Tensor], num_scales: int | None = None,
                        latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """f_hat (B, Cvae, H, W) after the given scales (float32, autocast off)."""
        return self.quantizer.lookup([g.to(self.device).long() for g in grids], latent_size, num_scales)

    def fhat_to_image(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decoder(post_quant_conv(f_hat)) clamped to [-1, 1]."""
        with torch.inference_mode(), self.autocast():
            return self.model.fhat_to_image(f_hat.to(self.device)).float()

    def to_var_input(self, tokens: MultiScaleTokens) -> torch.Tensor:
        grids = [g.to(self.device).long() for g in tokens.grids]
        with torch.no_grad():
            return self.quantizer.to_var_input(grids)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tile_convention": self.tile_convention}


def _fit_usage_buffer(sd: dict[str, torch.Tensor], model: VQVAE) -> dict[str, torch.Tensor]:
    # The reference silently replaces a usage buffer whose number of scales differs from the
    # model's; it carries no inference information.
    key = "quantize.ema_vocab_hit_SV"
    own = model.state_dict()[key]
    if key in sd and sd[key].shape != own.shape and sd[key].shape[1:] == own.shape[1:]:
        sd = {**sd, key: own.clone()}
    return sd


@register_tokenizer("var-vqvae")
def build_var_vqvae(checkpoint: str | None = None, config: dict[str, Any] | None = None, *,
                    precision: str = "fp32", device: str = "cpu", preprocess: PreprocessConfig | None = None,
                    seed: int = 0, tile_convention: str = "fixed") -> VarVQVAETokenizer:
    config = dict(config or {})
    arch = {k: config.pop(k) for k in ARCH_KEYS if k in config}
    cfg = merge_config(RELEASED_CONFIG, config, "var-vqvae")
    cfg["v_patch_nums"] = tuple(int(p) for p in cfg["v_patch_nums"])
    if "ch_mult" in arch:
        arch["ch_mult"] = tuple(int(m) for m in arch["ch_mult"])
        if not arch["ch_mult"] or any(m < 1 for m in arch["ch_mult"]):
            raise ValueError(f"var-vqvae: ch_mult must be a non-empty list of positive ints, got {arch['ch_mult']}")
    if "num_res_blocks" in arch and int(arch["num_res_blocks"]) < 1:
        raise ValueError(f"var-vqvae: num_res_blocks must be >= 1, got {arch['num_res_blocks']}")
    cfg.update(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # deterministic random weights when no checkpoint is given
        model = VQVAE(cfg)
    if checkpoint is not None:
        load_into(model, _fit_usage_buffer(read_state_dict(checkpoint), model), source=str(checkpoint))
    tok = VarVQVAETokenizer(model, cfg, precision=precision, device=device,
                            preprocess_config=preprocess or PreprocessConfig(size=model.downsample * cfg["v_patch_nums"][-1]))
    tok.tile_convention = tile_convention
    return tok
