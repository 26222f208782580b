"""One optimisation step of a tokenizer (any family) and the checkpoint state around it.

Kept free of Ray: `Trainer` takes a `wrap` function for DDP (Ray's prepare_model in the job,
identity in a single-process run), so the same step runs in tests, scripts and the Ray job.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from pipeline.config import recorded_dict
from pipeline.tokenizer_training.config import TokenizerTrainConfig
from pipeline.tokenizer_training.families import Family, checkpoint_state
from pipeline.tokenizer_training.losses import (PatchDiscriminator, VGGPerceptual, hinge_d_loss, hinge_g_loss,
                                                pixel_loss, ssim)
from pipeline.tokenizer_training.var_forward import restart_dead_codes
from pipeline.tokenizers.metrics import code_counts
from pipeline.var.checkpointing import load_checkpoint, save_checkpoint

DISC_FILE = "discriminator.safetensors"
DISC_OPT_FILE = "disc_optimizer.pt"


class ForwardModule(nn.Module):
    """What DDP wraps: the tokenizer's model behind the family's training forward, so gradients
    are synchronised by DDP's own forward/backward hooks."""

    def __init__(self, family: Family) -> None:
        super().__init__()
        self.model = family.model
        self._forward = family.forward

    def forward(self, x: torch.Tensor, quantize: bool = True):
        out = self._forward(self.model, x, quantize=quantize)
        return out.recon, out.quant_loss, out


@dataclass
class Restored:
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    history: list[dict[str, Any]]
    extra: dict[str, Any]
    disc: dict[str, torch.Tensor] | None = None
    disc_optimizer: dict[str, Any] | None = None


def load_run_checkpoint(directory: str) -> Restored:
    state = load_checkpoint(directory)
    disc = disc_opt = None
    if os.path.exists(os.path.join(directory, DISC_FILE)):
        from safetensors.torch import load_file
        disc = load_file(os.path.join(directory, DISC_FILE))
    if os.path.exists(os.path.join(directory, DISC_OPT_FILE)):
        disc_opt = torch.load(os.path.join(directory, DISC_OPT_FILE), map_location="cpu", weights_only=True)
    return Restored(state.step, state.model, state.optimizer, state.history, state.state, disc, disc_opt)


class Trainer:
    def __init__(self, cfg: TokenizerTrainConfig, family: Family, device: torch.device, rank: int = 0,
                 world: int = 1, restored: Restored | None = None) -> None:
        self.cfg, self.family, self.device, self.rank, self.world = cfg, family, device, rank, world
        # The tokenizer (not only its model) moves: evaluation calls tok.encode, which sends its
        # input to tok.device.
        family.tokenizer.to(device)
        self.raw = family.model
        self.step, self.history = 0, []
        if restored is not None:
            self.raw.load_state_dict(restored.model)
            self.step, self.history = restored.step, list(restored.history)
        self.module: nn.Module = ForwardModule(family)
        params = [p for p in self.raw.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        if restored is not None and restored.optimizer is not None:
            self.optimizer.load_state_dict(restored.optimizer)
        self.disc = self.disc_opt = None
        if cfg.disc_weight > 0:
            self.disc = PatchDiscriminator().to(device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
            if restored is not None and restored.disc is not None:
                self.disc.load_state_dict(restored.disc)
                if restored.disc_optimizer is not None:
                    self.disc_opt.load_state_dict(restored.disc_optimizer)
        self.perceptual = VGGPerceptual(cfg.perceptual_weights).to(device) if cfg.perceptual_weight > 0 else None
        self.code_window: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(cfg.seed + 7)
        self.fresh = restored is None and cfg.init_checkpoint is None

    def wrap(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        self.module = fn(self.module)
        if self.disc is not None:
            self.disc = fn(self.disc)

    # ------------------------------------------------------------------------------- one step
    def train_step(self, x: torch.Tensor) -> dict[str, Any] | None:
        cfg, t0 = self.cfg, time.perf_counter()
        lr = _set_lr(self.optimizer, self.step, cfg)
        quantize = self.step >= cfg.quant_start
        recon, quant_loss, out = self.module(x, quantize=quantize)
        starts = self.fresh or self.step == cfg.quant_start > 0
        if quantize and starts and self.family.codebook(self.raw) is not None:
            self._init_codebook(out)  # data-dependent codebook init when quantisation starts
            self.fresh = False
        rec = pixel_loss(cfg.pixel_loss, recon, x) * cfg.pixel_weight
        loss = rec + cfg.quant_weight * quant_loss
        logs: dict[str, float] = {}
        if cfg.l2_weight > 0:
            loss = loss + cfg.l2_weight * (recon - x).square().mean()
        if cfg.ssim_weight > 0:
            s = ssim(recon, x)
            loss = loss + cfg.ssim_weight * (1 - s)
            logs["ssim"] = s.item()
        if self.perceptual is not None:
            p = self.perceptual(recon, x)
            loss = loss + cfg.perceptual_weight * p
            logs["perceptual"] = p.item()
        gan_on = self.disc is not None and self.step >= cfg.disc_start
        if gan_on:
            g = hinge_g_loss(self.disc(recon))
            loss = loss + cfg.disc_weight * g
            logs["g_loss"] = g.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip))
        self.optimizer.step()
        if gan_on:
            real, fake = self.disc(torch.cat([x, recon.detach()])).chunk(2)  # one forward per backward (DDP)
            d = hinge_d_loss(real, fake)
            self.disc_opt.zero_grad(set_to_none=True)
            d.backward()
            self.disc_opt.step()
            logs["d_loss"] = float(d.detach())
        logs.update(self.family.after_step(out))
        self._track_codes(out)
        self.step += 1
        if not (self.step == 1 or self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
            return None
        values = self._mean_over_workers([loss.item(), rec.item(), float(quant_loss.detach())])
        seconds = time.perf_counter() - t0
        return {"step": self.step, "split": "train", "loss": values[0], "rec": values[1], "quant": values[2],
                "lr": lr, "grad_norm": grad_norm, "step_s": seconds,
                "images_per_s": x.shape[0] * self.world / max(seconds, 1e-9), **logs}

    # ------------------------------------------------------------------------------- codebook care
    def _init_codebook(self, out: Any) -> None:
        weight = self.family.codebook(self.raw)
        if out.latents is None:
            return
        zeros = torch.zeros(weight.shape[0], dtype=torch.int64)
        restart_dead_codes(weight.data, zeros, out.latents.detach().float(), self.gen)
        self._broadcast(weight)

    def _track_codes(self, out: Any) -> None:
        every = self.cfg.restart_dead_codes
        weight = self.family.codebook(self.raw)
        if not every or weight is None or not out.indices:
            return
        counts = sum(code_counts(i, self.family.vocab_size, self.family.groups).sum(0) for i in out.indices)
        self.code_window = counts if self.code_window is None else self.code_window + counts
        if (self.step + 1) % every:
            return
        window = self._sum_over_workers(self.code_window)
        if self.rank == 0 and out.latents is not None:
            restart_dead_codes(weight.data, window, out.latents.detach().float(), self.gen)
        self._broadcast(weight)
        self.code_window = None

    # ------------------------------------------------------------------------------- collectives
    def _distributed(self) -> bool:
        return self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def _broadcast(self, tensor: torch.Tensor) -> None:
        if self._distributed():
            torch.distributed.broadcast(tensor.data, src=0)

    def _sum_over_workers(self, t: torch.Tensor) -> torch.Tensor:
        if self._distributed():
            t = t.to(self.device)
            torch.distributed.all_reduce(t)
        return t.cpu()

    def _mean_over_workers(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self._distributed():
            t = self._sum_over_workers(t) / self.world
        return t.tolist()

    # ------------------------------------------------------------------------------- checkpoints
    def export_description(self) -> dict[str, Any]:
        tok = self.family.tokenizer
        return {"name": self.family.name, "config": tok.describe()["config"],
                "preprocess": dataclasses.asdict(tok.preprocess_config), "step": self.step,
                "train_config": recorded_dict(self.cfg)}

    def save(self, directory: str) -> None:
        state = {"step": self.step, "tokenizer": self.export_description()}
        save_checkpoint(directory, self.raw, self.optimizer, state, self.history)
        if self.disc is not None:
            from safetensors.torch import save_file
            disc = getattr(self.disc, "module", self.disc)
            save_file(checkpoint_state(disc), os.path.join(directory, DISC_FILE))
            torch.save(self.disc_opt.state_dict(), os.path.join(directory, DISC_OPT_FILE))
        with open(os.path.join(directory, "tokenizer.json"), "w") as f:
            json.dump(self.export_description(), f, indent=1)


def lr_at(step: int, cfg: TokenizerTrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: TokenizerTrainConfig) -> float:
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
