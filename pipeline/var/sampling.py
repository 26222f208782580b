"""Class-conditional sampling from a VAR (`autoregressive_infer_cfg` equivalent).

One scale per step: the blocks run only on the new scale's positions with a KV cache; the
logits are guided with classifier-free guidance whose weight ramps linearly over the scales;
tokens are drawn after top-k / top-p filtering from a seeded generator, in the reference's order
of random draws, so a given seed reproduces the reference's tokens. The tokenizer supplies the
codebook, the residual update of f_hat (phi convolutions) and the decoder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from pipeline.tokenizers.base import MultiScaleTokens


@dataclass
class SampleResult:
    indices: list[torch.Tensor]      # per scale (B, pn, pn) int64
    fhat: torch.Tensor               # (B, Cvae, H, W) final cumulative latent
    images: torch.Tensor | None      # (B, 3, H*16, W*16) in [0, 1], None if not decoded
    labels: torch.Tensor             # (B,) the class labels used

    def tokens(self) -> MultiScaleTokens:
        return MultiScaleTokens(grids=self.indices, patch_nums=tuple(g.shape[1] for g in self.indices))

    def flat(self) -> torch.Tensor:
        return torch.cat([g.reshape(g.shape[0], -1) for g in self.indices], dim=1)


def top_k_top_p_mask(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Boolean mask of the logits to discard (same shape), as the reference sampler computes it.

    top-k: discard every logit strictly below the k-th largest (ties at the threshold stay).
    top-p: sort ascending, discard entries whose cumulative probability is <= 1 - top_p,
    always keeping the largest. Each filter is off when its value is 0.
    """
    remove = torch.zeros_like(logits, dtype=torch.bool)
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1, largest=True, sorted=False)[0].amin(-1, keepdim=True)
        remove = logits < kth
        logits = logits.masked_fill(remove, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        sorted_remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        sorted_remove[..., -1:] = False
        remove = remove | sorted_remove.scatter(-1, sorted_idx, sorted_remove)
    return remove


def sample_tokens(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per position (B, l) from filtered logits (B, l, V); a single multinomial call."""
    B, l, V = logits_BlV.shape
    logits = logits_BlV.masked_fill(top_k_top_p_mask(logits_BlV, top_k, top_p), -torch.inf)
    probs = logits.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, 1, replacement=True, generator=generator).view(B, l)


def _gumbel_soft(logits: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


def _labels(model: Any, B: int, labels: Any, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if labels is None:
        uniform = torch.full((1, model.num_classes), 1.0 / model.num_classes, device=device)
        return torch.multinomial(uniform, num_samples=B, replacement=True, generator=generator).reshape(B)
    if isinstance(labels, int):
        return torch.full((B,), model.num_classes if labels < 0 else labels, device=device, dtype=torch.long)
    labels = torch.as_tensor(labels, device=device, dtype=torch.long).reshape(-1)
    if labels.numel() != B:
        raise ValueError(f"got {labels.numel()} labels for a batch of {B}")
    if (labels < 0).any() or (labels > model.num_classes).any():
        raise ValueError(f"labels must be in [0, {model.num_classes}] ({model.num_classes} = unconditional)")
    return labels


def _in_eval_mode(fn):
    """Run `fn(model, ...)` with the model in eval mode (no class dropout, no drop path), then
    put it back as it was: sampling from a model in the middle of training gives the same images
    as sampling from the loaded checkpoint."""
    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any):
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


@_in_eval_mode
@torch.no_grad()
def sample(model: Any, B: int, labels: Sequence[int] | torch.Tensor | int | None = None, *,
           tokenizer: Any = None, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96,
           temperature: float = 1.0, seed: int | None = 0, more_smooth: bool = False,
           decode: bool = True) -> SampleResult:
    """Generate B images (indices, final f_hat and decoded images in [0, 1]).

    cfg: guidance at the last scale (t = cfg * k / (SN - 1) at scale k; 0 = unguided);
    temperature divides the logits before filtering (1.0 = the reference);
    seed: seeds a generator on the model's device (None: the global RNG).
    """
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("sampling needs the tokenizer (its codebook, phi convolutions and decoder)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    quantize = tok.model.quantize
    codebook = quantize.embedding.weight
    device = model.pos_start.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
    label_B = _labels(model, B, labels, generator, device)

    patch_nums = model.patch_nums
    last = len(patch_nums) - 1
    cond_BD = model.class_emb(torch.cat((label_B, torch.full_like(label_B, model.num_classes))))
    level_pos = model.level_pos()
    x = cond_BD.unsqueeze(1) + model.pos_start + level_pos[:, :1]
    side = patch_nums[-1]
    fhat = cond_BD.new_zeros(B, codebook.shape[1], side, side, dtype=torch.float32)
    indices: list[torch.Tensor] = []
    cur = 0
    with model.kv_cache():
        for k, pn in enumerate(patch_nums):
            ratio = k / last if last else 0.0
            cur += pn * pn
            cond = model.shared_ada_lin(cond_BD)
            h = x
            for block in model.blocks:
                h = block(h, cond, None)  # the cache makes every earlier scale visible
            logits = model.logits(h, cond_BD)
            t = cfg * ratio
            logits = (1 + t) * logits[:B] - t * logits[B:]
            if temperature != 1.0:
                logits = logits / temperature
            if more_smooth:  # visualisation only: soft codes instead of hard tokens
                tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                soft = _gumbel_soft(logits.mul(1 + ratio), tau, generator)
                h_BlC = soft @ codebook.unsqueeze(0)
                idx = soft.argmax(-1)
            else:
                idx = sample_tokens(logits, top_k, top_p, generator)
                h_BlC = F.embedding(idx, codebook)
            indices.append(idx.view(B, pn, pn))
            h_BChw = h_BlC.transpose(1, 2).reshape(B, -1, pn, pn).float()
            next_size = (patch_nums[k + 1],) * 2 if k != last else None
            fhat, next_map = quantize.next_autoregressive_input(k, len(patch_nums), fhat, h_BChw, next_size)
            if k != last:
                nxt = next_map.reshape(B, next_map.shape[1], -1).transpose(1, 2)
                x = model.word_embed(nxt) + level_pos[:, cur:cur + patch_nums[k + 1] ** 2]
                x = x.repeat(2, 1, 1)
    images = None
    if decode:
        images = tok.fhat_to_image(fhat).float().add(1).mul(0.5).clamp(0, 1)
    return SampleResult(indices=indices, fhat=fhat, images=images, labels=label_B)


def image_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 2) -> "Any":
    """(N, 3, H, W) in [0, 1] -> a PIL image grid, `ncols` images per row (white gaps)."""
    import math

    from PIL import Image

    n, _, h, w = images.shape
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    grid = torch.ones(3, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)
