"""The training job's configuration: one dataclass, saved next to every run and in every checkpoint.

Fields left at None take the reference recipe for the model depth (README commands, spec 2.10):
tblr, init_adaln_gamma, wpe and twde from the nearest released depth; the peak learning rate is
tblr * global_batch / 256.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.var.recipe import depth_recipe


@dataclass
class TrainConfig:
    # data and tokenizer
    tokens: list[str] = field(default_factory=list, metadata={"help": (
        "the output of `scaletok tokenize` (its directory or s3:// URL; read through its commit records), "
        "or one .parquet file; repeat to train on several outputs of one job fingerprint")})
    storage_options: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "fsspec option for S3 tokens/storage, e.g. client_kwargs={endpoint_url: ...}")})
    tokenizer: str | None = field(default=None, metadata={"help": (
        "tokenizer name (default: the one named in the Parquet metadata)")})
    tokenizer_checkpoint: str | None = field(default=None, metadata={"help": (
        "the tokenizer weights the tokens were made with (codebook + phi convs); "
        "without it seeded random weights (tests only)")})
    tokenizer_config: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "tokenizer constructor arguments (default: the Parquet metadata's)")})
    # model
    depth: int = field(default=16, metadata={"help": "VAR depth: width 64*depth, heads = depth (16, 20, 24, 30 are released)"})
    var_config: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "extra VAR constructor arguments, e.g. embed_dim=64 num_heads=2")})
    var_checkpoint: str | None = field(default=None, metadata={"help": (
        "initial weights (official var_d*.pth or one of our model.safetensors)")})
    init_adaln: float = field(default=0.5, metadata={"help": "init scale of the AdaLN projection weights (reference)"})
    init_adaln_gamma: float | None = field(default=None, metadata={"help": (
        "init scale of the AdaLN gamma weights (default: the depth's recipe)")})
    init_head: float = field(default=0.02, metadata={"help": "init scale of the output head weights (reference)"})
    # optimisation (reference recipe)
    batch_size: int | None = field(default=None, metadata={"help": (
        "global batch over all workers (default: the depth's README recipe, 768; 1024 for d30)")})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps (0: --epochs over the usable rows)"})
    epochs: float | None = field(default=None, metadata={"help": (
        "epochs over the usable rows when --max-steps is 0 (default: the depth's recipe, 200/250/350)")})
    tblr: float | None = field(default=None, metadata={"help": (
        "base lr per 256 images (default: the depth's README recipe)")})
    lr: float | None = field(default=None, metadata={"help": "peak lr (default: tblr * batch_size / 256)"})
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "AdamW betas, e.g. 0.9,0.95"})
    wp0: float = field(default=0.005, metadata={"help": "warm-up starts at wp0 * lr"})
    warmup_ratio: float = field(default=0.02, metadata={"help": (
        "warm-up length as a fraction of the run (ep/50 epochs of ep: 2 %)")})
    wpe: float | None = field(default=None, metadata={"help": (
        "final lr factor of the 'lin0' decay (default: the depth's recipe)")})
    twd: float = field(default=0.05, metadata={"help": "weight decay at the start"})
    twde: float | None = field(default=None, metadata={"help": (
        "weight decay at the end, cosine in between (default: the depth's recipe)")})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the token cross-entropy"})
    cond_drop_rate: float = field(default=0.1, metadata={"help": "class dropout for classifier-free guidance"})
    grad_clip: float = field(default=2.0, metadata={"help": "clip the gradient norm to this"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (CPU runs stay fp32)"})
    seed: int = field(default=0, metadata={"help": (
        "seed of the model init, the data order (a seeded permutation per epoch), the variant each epoch "
        "uses and class dropout")})
    all_variants: bool = field(default=False, metadata={"help": (
        "use every stored row (each augmentation variant its own sample) instead of one variant of each "
        "image per epoch (VAR's recipe: a fresh random crop each epoch)")})
    # distribution and run bookkeeping
    num_workers: int = field(default=1, metadata={"help": "Ray Train workers (one per GPU with --use-gpu)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker"})
    cpus_per_worker: float | None = field(default=None, metadata={"help": (
        "CPUs reserved per worker (default 0.5 on CPU, leaving room for Parquet reads; 1 with --use-gpu)")})
    storage_path: str = field(default="runs", metadata={"help": "where runs live: local dir or s3://bucket/prefix"})
    name: str = field(default="var", metadata={"help": "run name; the same name resumes"})
    ckpt_every: int = field(default=500, metadata={"help": "save a checkpoint every N steps (and at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (the newest)"})
    max_failures: int = field(default=2, metadata={"help": (
        "worker-group restarts from the latest checkpoint before the run fails")})
    log_every: int = field(default=10, metadata={"help": "log metrics every N steps"})
    ray_address: str | None = field(default=None, metadata={"help": (
        "Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")})
    progress_bars: bool = field(default=False, metadata={"help": "Ray Data's per-operator progress bars (noisy in logs)"})
    fail_at_step: int = field(default=0, metadata={"help": (
        "testing: one worker process exits once at this step (exercises FailureConfig)")})
    stop_at_step: int = field(default=0, metadata={"help": (
        "end the run after the checkpoint of this step, as if stopped (time-boxed jobs, tests); rerunning "
        "without it resumes exactly where it stopped")})

    def resolved(self) -> "TrainConfig":
        """A copy with every recipe default filled in for this depth."""
        r = depth_recipe(self.depth)
        cfg = replace(self,
                      tblr=r.tblr if self.tblr is None else self.tblr,
                      init_adaln_gamma=r.init_adaln_gamma if self.init_adaln_gamma is None else self.init_adaln_gamma,
                      wpe=r.wpe if self.wpe is None else self.wpe,
                      twde=r.twde if self.twde is None else self.twde,
                      batch_size=r.batch_size if self.batch_size is None else self.batch_size,
                      epochs=float(r.epochs) if self.epochs is None else self.epochs)
        if cfg.lr is None:
            cfg = replace(cfg, lr=cfg.tblr * cfg.batch_size / 256)
        if cfg.cpus_per_worker is None:
            cfg = replace(cfg, cpus_per_worker=1.0 if cfg.use_gpu else 0.5)
        return cfg

    def validate(self) -> None:
        """Checks a `resolved()` config."""
        if not self.tokens:
            raise ValueError("TrainConfig.tokens is required (the tokenize job's output)")
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if self.batch_size is None or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size}); resolve the config first")
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by num_workers {self.num_workers}")
        if self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("ckpt_every and log_every must be >= 1")
        if self.stop_at_step < 0 or self.seed < 0:
            raise ValueError("stop_at_step and seed must be >= 0")

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers

    def var_constructor(self) -> dict[str, Any]:
        return {"depth": self.depth, "cond_drop_rate": self.cond_drop_rate, **self.var_config}
