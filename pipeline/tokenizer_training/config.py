"""The tokenizer-training job's configuration: one dataclass, saved beside every run and checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("var-vqvae", "gq", "gsq")
PIXEL_LOSSES = ("l1", "l2", "charbonnier")


@dataclass
class TokenizerTrainConfig:
    # data
    train_shards: str = field(default="", metadata={"help": (
        "WebDataset shards to train on: brace pattern, glob, list, local or s3://")})
    eval_shards: str = field(default="", metadata={"help": (
        "held-out WebDataset shards for PSNR/SSIM/codebook usage and the recon grid (empty: no evaluation)")})
    storage_options: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "fsspec option for S3 shards/storage, e.g. client_kwargs={endpoint_url: ...}")})
    crop_size: int = field(default=128, metadata={"help": (
        "random crop side in pixels (a multiple of the tokenizer's downsample)")})
    min_scale: float = field(default=0.25, metadata={"help": (
        "random resized crop: the image is shrunk by a factor in [max(crop/short side, min_scale), 1] "
        "before cropping")})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips of the training crops"})
    cache_images: bool = field(default=True, metadata={"help": (
        "keep decoded images in memory after the first pass (later epochs cost only the crops)")})
    eval_crops: int = field(default=16, metadata={"help": "held-out crops per evaluation (fixed, seeded)"})
    # model
    family: str = field(default="var-vqvae", metadata={"help": "tokenizer family to train: var-vqvae | gq | gsq"})
    model_config: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "tokenizer constructor config, e.g. ch=32 vocab_size=1024 z_channels=16")})
    init_checkpoint: str | None = field(default=None, metadata={"help": (
        "start from these weights (a checkpoint the tokenizer loads)")})
    # losses
    pixel_loss: str = field(default="l1", metadata={"help": "reconstruction loss: l1 | l2 | charbonnier"})
    pixel_weight: float = field(default=1.0, metadata={"help": "weight of the pixel loss"})
    l2_weight: float = field(default=0.0, metadata={"help": "weight of an extra L2 term (l1 + l2 mixes)"})
    ssim_weight: float = field(default=0.0, metadata={"help": "weight of (1 - SSIM)"})
    perceptual_weights: str | None = field(default=None, metadata={"help": (
        "VGG16 weights (torchvision key names, safetensors/.pth) for the perceptual loss; never downloaded")})
    perceptual_weight: float = field(default=0.0, metadata={"help": "weight of the perceptual loss (needs --perceptual-weights)"})
    quant_weight: float = field(default=1.0, metadata={"help": (
        "weight of codebook + commitment (var-vqvae, gsq) / the KL constraint (gq)")})
    beta: float | None = field(default=None, metadata={"help": "commitment weight (default: the family's, 0.25)"})
    disc_weight: float = field(default=0.0, metadata={"help": "weight of the patch discriminator (hinge) loss; 0 = off"})
    disc_start: int = field(default=0, metadata={"help": "discriminator warm-up: the first step it acts"})
    gq_kl_weight: float = field(default=0.1, metadata={"help": "GQ: weight of the TDC loss (reference config)"})
    gq_tolerance: float = field(default=0.5, metadata={"help": "GQ: KL band +- tolerance in bits"})
    quant_start: int = field(default=0, metadata={"help": (
        "autoencoder warm-up: steps before quantisation starts (var-vqvae, gsq)")})
    restart_dead_codes: int = field(default=0, metadata={"help": (
        "every N steps replace codes unused in the window by current latents (0 = off)")})
    # optimisation
    batch_size: int = field(default=8, metadata={"help": "global batch over all workers"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decay ends at lr * this"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "Adam betas, e.g. 0.9,0.95"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this"})
    seed: int = field(default=0, metadata={"help": "seed of the init, crops and evaluation set"})
    threads: int = field(default=0, metadata={"help": "torch intra-op threads per worker (0: torch's default)"})
    # distribution and bookkeeping
    num_workers: int = field(default=1, metadata={"help": "Ray Train workers (DDP); one per GPU with --use-gpu"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs reserved per worker"})
    storage_path: str = field(default="runs", metadata={"help": "where runs live: local dir or s3://bucket/prefix"})
    name: str = field(default="tokenizer", metadata={"help": "run name; the same name resumes"})
    ckpt_every: int = field(default=200, metadata={"help": "save a checkpoint every N steps (and at the end)"})
    eval_every: int = field(default=200, metadata={"help": "evaluate on --eval-shards every N steps"})
    log_every: int = field(default=10, metadata={"help": "log metrics every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (the newest)"})
    max_failures: int = field(default=1, metadata={"help": (
        "worker-group restarts from the latest checkpoint before the run fails")})
    ray_address: str | None = field(default=None, metadata={"help": (
        "Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")})

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
