"""The tokenizer-training job's configuration: one dataclass, saved beside every run and checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("var-vqvae", "gq", "gsq")
PIXEL_LOSSES = ("l1", "l2", "charbonnier")


@dataclass
class TokenizerTrainConfig:
    # data
    train_shards: str = ""                    # WebDataset shards: brace pattern, glob, list, local or s3://
    eval_shards: str = ""                     # held-out shards for PSNR/SSIM/usage ("" = no evaluation)
    storage_options: dict[str, Any] = field(default_factory=dict)   # fsspec options (S3 endpoint, keys)
    crop_size: int = 128                      # random crops of this side (a multiple of the downsample)
    min_scale: float = 0.25                   # random resized crop: the image is shrunk by a factor in
                                              # [max(crop/short side, min_scale), 1] before cropping
    hflip: bool = True
    cache_images: bool = True                 # keep decoded images in memory after the first pass
    eval_crops: int = 16                      # held-out crops per evaluation (fixed, seeded)
    # model
    family: str = "var-vqvae"                 # var-vqvae | gq | gsq
    model_config: dict[str, Any] = field(default_factory=dict)      # the tokenizer's constructor config
    init_checkpoint: str | None = None        # start from these weights (a checkpoint the tokenizer loads)
    # losses
    pixel_loss: str = "l1"                    # l1 | l2 | charbonnier
    pixel_weight: float = 1.0
    l2_weight: float = 0.0                    # an extra L2 term (l1 + l2 mixes)
    ssim_weight: float = 0.0                  # weight of (1 - SSIM)
    perceptual_weights: str | None = None     # VGG16 feature weights (safetensors/.pth); nothing is downloaded
    perceptual_weight: float = 0.0
    quant_weight: float = 1.0                 # codebook + commitment (var-vqvae, gsq) / KL constraint (gq)
    beta: float | None = None                 # commitment weight (None: the family's default, 0.25)
    disc_weight: float = 0.0                  # patch discriminator (hinge); 0 = off
    disc_start: int = 0                       # discriminator warm-up: first step it acts
    gq_kl_weight: float = 0.1                 # GQ: weight of the TDC loss (reference config)
    gq_tolerance: float = 0.5                 # GQ: KL band +- tolerance in bits
    quant_start: int = 0                      # autoencoder warm-up: steps before quantisation (var-vqvae, gsq)
    restart_dead_codes: int = 0               # every N steps replace unused codes with latents (0 = off)
    # optimisation
    batch_size: int = 8                       # global, over all workers
    max_steps: int = 1000
    lr: float = 2e-4
    min_lr_ratio: float = 0.1                 # cosine decay to lr * ratio
    warmup_steps: int = 50
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0                          # torch intra-op threads per worker (0: torch's default)
    # distribution and bookkeeping
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"                # local dir or s3:// URL
    name: str = "tokenizer"
    ckpt_every: int = 200
    eval_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    max_failures: int = 1
    ray_address: str | None = None

    def validate(self) -> None:
        if not self.train_shards:
            raise ValueError("train_shards is required (WebDataset tar shards)")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {self.pixel_loss!r}")
        if self.num_workers < 1 or self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must split evenly over {self.num_workers} workers")
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError("perceptual_weight > 0 needs perceptual_weights (a VGG16 file you supply)")
        for name in ("max_steps", "ckpt_every", "eval_every", "log_every", "crop_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers
