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
    tokens: str = ""                          # token Parquet: a job output dir, its tokens/ dir, a file or s3:// URL
    storage_options: dict[str, Any] = field(default_factory=dict)   # fsspec options (S3 endpoint, keys)
    tokenizer: str | None = None              # None: the name in the Parquet metadata
    tokenizer_checkpoint: str | None = None   # None: seeded random weights (tests) -- give the real one
    tokenizer_config: dict[str, Any] = field(default_factory=dict)   # empty: the Parquet metadata's
    # model
    depth: int = 16
    var_config: dict[str, Any] = field(default_factory=dict)         # extra VAR constructor arguments
    var_checkpoint: str | None = None         # start from these weights (official .pth or ours)
    init_adaln: float = 0.5
    init_adaln_gamma: float | None = None
    init_head: float = 0.02
    # optimisation (reference recipe)
    batch_size: int | None = None             # global, over all workers; None: the depth's recipe (768; 1024 for d30)
    max_steps: int = 0                        # 0: epochs * usable rows // batch_size
    epochs: float | None = None               # None: the depth's recipe (200 d16, 250 d20, 350 d24+)
    tblr: float | None = None                 # base lr per 256 images
    lr: float | None = None                   # peak lr; None: tblr * batch_size / 256
    betas: tuple[float, float] = (0.9, 0.95)
    wp0: float = 0.005                        # warm-up starts at wp0 * lr
    warmup_ratio: float = 0.02                # warm-up = ep/50 epochs of ep, i.e. 2 % of the run
    wpe: float | None = None                  # final lr factor of the "lin0" decay
    twd: float = 0.05                         # weight decay at the start
    twde: float | None = None                 # weight decay at the end (cosine in between)
    label_smoothing: float = 0.0
    cond_drop_rate: float = 0.1               # class dropout for classifier-free guidance
    grad_clip: float = 2.0
    bf16: bool = True                         # bf16 autocast on GPU (CPU runs stay fp32)
    seed: int = 0
    shuffle_files: bool = True
    # distribution and run bookkeeping
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None      # None: 0.5 on CPU runs (leaves CPU for Parquet reads)
    storage_path: str = "runs"                # local dir or s3:// URL
    name: str = "var"
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    max_failures: int = 2
    log_every: int = 10
    ray_address: str | None = None
    progress_bars: bool = False               # Ray Data's per-operator bars (noisy in logs)
    fail_at_step: int = 0                     # fault injection (tests): one worker exits once at this step

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

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers

    def var_constructor(self) -> dict[str, Any]:
        return {"depth": self.depth, "cond_drop_rate": self.cond_drop_rate, **self.var_config}
