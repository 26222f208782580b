"""Training forward of VAR's multi-scale residual VQ-VAE (var_spec 1.6, "VAE-training forward").

The quantizer module is used as it is (its codebook, phi convs and nearest-code search); this file
only adds the gradient path the reference's `VectorQuantizer2.forward` has:
  per scale k: pick codes for the area-downsampled residual, add phi(upsampled codes) to f_hat,
  loss_k = beta * MSE(sg(f_hat), f) + MSE(f_hat, sg(f)); loss = mean_k loss_k;
  decoder input = sg(f_hat) - sg(f) + f (straight-through).
Everything runs in float32 with autocast off, like the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.tokenizers.quantizers.residual import MultiScaleResidualQuantizer, scale_shapes


@dataclass
class ForwardOutput:
    recon: torch.Tensor                        # decoder output (B, 3, H, W)
    quant_loss: torch.Tensor                   # codebook + commitment (or the family's regulariser)
    indices: list[torch.Tensor] = field(default_factory=list)   # per scale (B, h, w) or (B, h, w, G)
    latents: torch.Tensor | None = None        # continuous rows (N, C) for dead-code restarts
    logs: dict[str, float] = field(default_factory=dict)


def residual_quantize_train(q: MultiScaleResidualQuantizer, f: torch.Tensor, beta: float
                            ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(straight-through f_hat, vq loss, indices per scale, the residual rows codes were picked for)."""
    with torch.autocast(f.device.type, enabled=False):
        f = f.float()
        b, c, h, w = f.shape
        f_ng = f.detach()
        f_rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
        shapes = scale_shapes(q.patch_nums, h, w)
        n = len(shapes)
        loss = f.new_zeros(())
        indices, rows = [], []
        for k, (ph, pw) in enumerate(shapes):
            z = F.interpolate(f_rest, size=(ph, pw), mode="area") if k != n - 1 else f_rest
            z_rows = z.permute(0, 2, 3, 1).reshape(-1, c)
            with torch.no_grad():
                idx = q._nearest(z_rows).view(b, ph, pw)
            refined = q._refine(q._code_map(idx), k, n, (h, w))
            f_hat = f_hat + refined
            f_rest = f_rest - refined.detach()
            loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
            indices.append(idx)
            rows.append(z_rows)
        st = (f_hat.detach() - f_ng) + f
    return st, loss / n, indices, torch.cat(rows)


def var_vqvae_forward(model, x: torch.Tensor, beta: float, quantize: bool = True) -> ForwardOutput:
    f = model.encode_latent(x)
    if not quantize:  # autoencoder warm-up: the decoder sees the continuous latent
        return ForwardOutput(recon=model.decoder(model.post_quant_conv(f)), quant_loss=f.new_zeros(()))
    f_st, vq_loss, indices, rows = residual_quantize_train(model.quantize, f, beta)
    recon = model.decoder(model.post_quant_conv(f_st))
    return ForwardOutput(recon=recon, quant_loss=vq_loss, indices=indices, latents=rows)


@torch.no_grad()
def restart_dead_codes(embedding: torch.Tensor, counts: torch.Tensor, rows: torch.Tensor,
                       generator: torch.Generator | None = None) -> int:
    """Replace never-used codes (counts == 0) by randomly chosen latent rows; returns how many.

    A common remedy for codebook collapse in short runs; the quantizer module is untouched, only
    its weights change. `embedding` (V, C) is edited in place; rows (N, C) on the same device."""
    dead = (counts.to(embedding.device) == 0).nonzero().flatten()
    if dead.numel() == 0 or rows.numel() == 0:
        return 0
    pick = torch.randint(0, rows.shape[0], (dead.numel(),), generator=generator, device="cpu").to(rows.device)
    embedding[dead] = rows[pick].to(embedding.dtype)
    return int(dead.numel())
