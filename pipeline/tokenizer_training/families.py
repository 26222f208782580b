"""One training adapter per tokenizer family: build the trainable model, its forward, its codes.

The model is always the tokenizer's own `model` module (built through `load_tokenizer`), so the
state dict a run saves is exactly the layout `load_tokenizer(name, checkpoint=...)` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from pipeline.tokenizers import load_tokenizer
from pipeline.tokenizer_training.var_forward import ForwardOutput, var_vqvae_forward


@dataclass
class Family:
    name: str
    tokenizer: Any                             # the tokenizer wrapping `model` (for evaluation)
    model: nn.Module                           # trainable module; its state dict is the checkpoint
    forward: Callable[..., ForwardOutput]      # (model, images, quantize=True) -> ForwardOutput
    vocab_size: int
    groups: int
    codebook: Callable[[nn.Module], torch.Tensor | None]   # learnable (V, C) codebook, None if fixed
    after_step: Callable[[ForwardOutput], dict[str, float]] = lambda out: {}

    @property
    def downsample(self) -> int:
        return int(self.tokenizer.downsample)


def build_family(name: str, model_config: dict[str, Any], *, beta: float | None = None,
                 init_checkpoint: str | None = None, seed: int = 0, gq_tolerance: float = 0.5,
                 gq_kl_weight: float = 0.1) -> Family:
    tok = load_tokenizer(name, checkpoint=init_checkpoint, config=model_config or None, seed=seed)
    model = tok.model
    model.requires_grad_(True).train()
    if name == "var-vqvae":
        b = float(tok.config["beta"] if beta is None else beta)
        return Family(name, tok, model, lambda m, x, quantize=True: var_vqvae_forward(m, x, b, quantize), tok.vocab_size, 1,
                      lambda m: m.quantize.embedding.weight)
    if name == "gq":
        from pipeline.tokenizer_training.gq_forward import GQRegularizer, gq_forward
        reg = GQRegularizer(tok, tolerance=gq_tolerance)
        return Family(name, tok, model, lambda m, x, quantize=True: gq_forward(m, x, tok, reg, gq_kl_weight), tok.vocab_size,
                      tok.groups,
                      lambda m: None, after_step=reg.update)
    if name == "gsq":
        from pipeline.tokenizer_training.gsq_forward import gsq_forward
        b = 0.25 if beta is None else float(beta)
        return Family(name, tok, model, lambda m, x, quantize=True: gsq_forward(m, x, tok, b, quantize), tok.vocab_size, tok.groups,
                      lambda m: m.quantizers.codebook.weight)
    raise ValueError(f"no training recipe for tokenizer family {name!r} (var-vqvae, gq, gsq)")


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tokenizer's state dict, contiguous on the CPU (what safetensors stores)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
