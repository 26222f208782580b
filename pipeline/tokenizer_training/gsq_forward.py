"""Training forward of GSQ (flex_gen `vq` / `gvq` with l2-normalised search; tokenizers_spec 3.4).

The SphericalQuantizer module is used as it is (its codebook and search); this adds the reference
training path: per group vector x, x_n = l2-normalise(x); code = nearest normalised row;
loss = beta * MSE(x_n, sg(e)) + MSE(e, sg(x_n)) with e the RAW stored row, and the decoder gets
x_n + sg(e - x_n), numerically the raw row (what inference decodes), so training and tokenizing
see the same decoder input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.tokenizer_training.var_forward import ForwardOutput
from pipeline.tokenizers.quantizers.spherical import nearest_rows, normalise_rows


def spherical_quantize_train(q, latent: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(straight-through latent (B, D, H, W), codebook + commitment loss, codes, normalised rows)."""
    with torch.autocast(latent.device.type, enabled=False):
        b, d, h, w = latent.shape
        rows = latent.float().permute(0, 2, 3, 1).reshape(-1, d // q.groups)
        rows_n = normalise_rows(rows, q.norm_p)
        with torch.no_grad():
            index = nearest_rows(rows_n.detach(), q.codebook.weight, norm_p=q.norm_p)
        e = q.codebook.weight[index]
        loss = beta * F.mse_loss(rows_n, e.detach()) + F.mse_loss(e, rows_n.detach())
        st = rows_n + (e - rows_n).detach()
        out = st.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        codes = index.reshape(b, h, w, q.groups) if q.grouped else index.reshape(b, h, w)
    return out, loss, codes, rows_n.detach()


def gsq_forward(model, x: torch.Tensor, tok, beta: float, quantize: bool = True) -> ForwardOutput:
    z = model.encoder(x)
    if not quantize:  # autoencoder warm-up on the l2-normalised latent (what the codes will approximate)
        q = model.quantizers
        b, d, h, w = z.shape
        rows = normalise_rows(z.permute(0, 2, 3, 1).reshape(-1, d // q.groups), q.norm_p)
        zn = rows.reshape(b, h, w, d).permute(0, 3, 1, 2)
        return ForwardOutput(recon=model.decoder(zn), quant_loss=z.new_zeros(()))
    zq, loss, codes, rows = spherical_quantize_train(model.quantizers, z, beta)
    return ForwardOutput(recon=model.decoder(zq), quant_loss=loss, indices=[codes], latents=rows)
