"""The Ray Train worker: `set_up` (tokenizer, model, optimizer, restored state, the rank's token
rows), `train_step` (one optimizer step of the reference recipe) and `train_loop_per_worker`, a
loop that only orchestrates (timing, logging, checkpoints), as torchtitan's `Trainer.train` ->
`train_step`.

Reproducibility. Everything random is a function of (seed, step, rank): the batch comes from the
data plan (pipeline/var/data_plan.py), and the global RNG that class dropout and drop path draw
from is re-seeded at every step. So a run repeats step for step, and a run restored from the
checkpoint of step s (the checkpoint holds the model, AdamW's state and s; the lr/wd schedule is
a function of s) continues with exactly the batches, dropout and optimizer state the straight run
had: the same losses.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.config import config_from_ray, recorded_dict
from pipeline.io import filesystem_for
from pipeline.sinks.schema import token_dtype
from pipeline.tokenizers import MultiScaleTokens, TokenizerMismatch, tokenizer_from_metadata
from pipeline.training.console import say
from pipeline.training.run_config import checkpoint_dir_name
from pipeline.var.checkpointing import METRICS_FILE, load_checkpoint, save_checkpoint, write_jsonl
from pipeline.var.data import TokenSource
from pipeline.var.data_plan import DataPlan, Segment
from pipeline.var.loading import load_var
from pipeline.var.metrics import step_row
from pipeline.var.model import scale_begin_ends
from pipeline.var.recipe import apply_schedule, param_groups, per_scale_stats, token_loss
from pipeline.var.token_share import ShareLoader, check_fits
from pipeline.var.train_config import TrainConfig

FAULT_MARKER = ".fault_injected"


@dataclass
class Worker:
    """What one rank trains with; `step` counts the optimizer steps done."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    tok: Any
    raw: torch.nn.Module              # the VAR itself (its state dict is what checkpoints hold)
    model: torch.nn.Module            # `raw` under DDP when world > 1
    optimizer: torch.optim.Optimizer
    data: ShareLoader
    plan: DataPlan
    max_steps: int
    step: int
    history: list[dict[str, Any]]
    record: dict[str, Any]            # state.json's fixed part (configs, tokenizer)
    fs: Any
    run_dir: str
    shapes: list[tuple[int, int]] = field(default_factory=list)
    begin_ends: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class StepResult:
    loss: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    lr: float
    wd: float
    grad_norm: float


def storage_fs(cfg: TrainConfig):
    """(fsspec filesystem, run directory path) of the run's storage."""
    path = cfg.storage_path
    if "://" not in path:
        path = os.path.abspath(path)
    fs, root = filesystem_for(path, cfg.storage_options)
    return fs, posixpath.join(root, cfg.name)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The global RNG's seed for step `step` on `rank` (class dropout and drop path differ per rank)."""
    return (int(seed) * 1_000_003 + int(step)) * 1_009 + int(rank)


# ------------------------------------------------------------------------------------------ set-up
def set_up(loop_config: dict[str, Any]) -> Worker:
    import ray.train
    import ray.train.torch

    cfg = config_from_ray(TrainConfig, loop_config["config"])  # storage options back from the object store
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    plan = DataPlan(**loop_config["plan"])
    # The driver's file list on a filesystem built here: the storage options never travel in clear.
    fs, _ = filesystem_for(cfg.tokens[0], cfg.storage_options)
    source = TokenSource(files=tuple(loop_config["files"]), filesystem=fs, metadata=loop_config["metadata"],
                         manifests=tuple(loop_config.get("integrity") or ()))
    seq_len = int(loop_config["seq_len"])
    num_classes = int(loop_config["num_classes"])
    itemsize = token_dtype(int(source.metadata.get("vocab_size") or 0)).byte_width
    check_fits(int(loop_config["share_rows"][rank]) * seq_len * itemsize, rank)
    # The token rows load in the background while the model is built.
    data = ShareLoader(source, [Segment(**s) for s in loop_config["shares"][rank]], plan, rank, seq_len,
                       null_label=num_classes)

    try:
        tok = tokenizer_from_metadata(loop_config["tokenizer"], device=device)
    except TokenizerMismatch as e:
        raise RuntimeError(f"the tokenizer rebuilt on worker {rank} differs from the driver's (checkpoint path "
                           f"not visible on the worker?): {e}") from e
    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            restored = load_checkpoint(d)
    init = {"init_adaln": cfg.init_adaln, "init_adaln_gamma": cfg.init_adaln_gamma, "init_head": cfg.init_head}
    weights = restored.model if restored is not None else cfg.var_checkpoint
    var_cfg = {"patch_nums": tuple(loop_config["patch_nums"]), **cfg.var_constructor()}
    raw = load_var(weights, config=var_cfg, tokenizer=tok, seed=cfg.seed, init=init, device=device).train()
    optimizer = torch.optim.AdamW(param_groups(raw, cfg.twd), lr=cfg.lr, betas=tuple(cfg.betas))
    if restored is not None and restored.optimizer is not None:
        optimizer.load_state_dict(restored.optimizer)
    model = ray.train.torch.prepare_model(raw, parallel_strategy_kwargs={"broadcast_buffers": False})
    fs, run_dir = storage_fs(cfg)
    step = restored.step if restored is not None else 0
    if restored is not None and rank == 0:
        say_data_change(restored.state.get("data"), plan, step)
    return Worker(
        cfg=cfg, rank=rank, world=world, device=device, tok=tok, raw=raw, model=model, optimizer=optimizer,
        data=data, plan=plan, max_steps=int(loop_config["max_steps"]), step=step,
        history=list(restored.history) if restored is not None else [],
        record={"max_steps": int(loop_config["max_steps"]), "var_config": raw.config.to_dict(),
                "train_config": recorded_dict(cfg), "tokenizer": loop_config["tokenizer"],
                "class_names": loop_config.get("class_names")},
        fs=fs, run_dir=run_dir, shapes=[(p, p) for p in raw.patch_nums], begin_ends=scale_begin_ends(raw.patch_nums))


def say_data_change(saved: dict[str, Any] | None, plan: DataPlan, step: int) -> None:
    """A resume whose data plan differs from the checkpoint's cannot repeat the straight run's batches."""
    if not saved:
        return
    keys = ("world", "per_rank_batch", "seed", "all_variants", "digest")
    changed = [f"{k} {saved.get(k)} -> {getattr(plan, k)}" for k in keys if saved.get(k) != getattr(plan, k)]
    if changed:
        say(f"[train] resuming at step {step} with another data plan ({', '.join(changed)}): the batches from here "
            f"on follow the new plan, not the interrupted run's")


# -------------------------------------------------------------------------------------------- step
def train_step(w: Worker, tokens: torch.Tensor, labels: torch.Tensor) -> StepResult:
    """One optimizer step on this rank's batch; DDP averages the gradients over the ranks."""
    cfg = w.cfg
    torch.manual_seed(step_seed(cfg.seed, w.step, w.rank))
    target = tokens.to(w.device, non_blocking=True)
    labels = labels.to(w.device, non_blocking=True)
    x = w.tok.to_var_input(MultiScaleTokens.from_flat(target, w.shapes, w.raw.patch_nums))
    lr, wd = apply_schedule(w.optimizer, w.step, peak_lr=cfg.lr, warmup_it=cfg.warmup_ratio * w.max_steps,
                            max_it=w.max_steps, wp0=cfg.wp0, wpe=cfg.wpe, twd=cfg.twd, twde=cfg.twde)
    with torch.autocast(w.device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and w.device.type == "cuda"):
        logits = w.model(labels, x)
    loss = token_loss(logits, target, cfg.label_smoothing)
    w.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(w.raw.parameters(), cfg.grad_clip))
    w.optimizer.step()
    return StepResult(loss=loss, logits=logits, target=target, lr=lr, wd=wd, grad_norm=grad_norm)


# -------------------------------------------------------------------------------------------- loop
class WallMeter:
    """Wall time, data wait and tokens since the previous metrics row (honest throughput)."""

    def __init__(self) -> None:
        self.since, self.steps, self.wait, self.tokens = time.perf_counter(), 0, 0.0, 0

    def add(self, wait: float, tokens: int) -> None:
        self.steps, self.wait, self.tokens = self.steps + 1, self.wait + wait, self.tokens + tokens

    def take(self) -> tuple[float, float, float]:
        """(wall s per step, data wait s per step, tokens/s) of the window, then a new window."""
        wall = time.perf_counter() - self.since
        out = (wall / max(self.steps, 1), self.wait / max(self.steps, 1), self.tokens / max(wall, 1e-9))
        self.__init__()
        return out


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    w = set_up(loop_config)
    cfg = w.cfg
    stop = min(w.max_steps, cfg.stop_at_step or w.max_steps)
    if w.rank == 0:
        say(f"[train] world={w.world} device={w.device} threads={torch.get_num_threads()} steps {w.step}->{stop} of {w.max_steps} "
            f"params={w.raw.num_params():,} batch={cfg.per_worker_batch}x{w.world} lr={cfg.lr:.3g} "
            f"epoch={w.plan.steps_per_epoch} steps, {'every row' if w.plan.all_variants else 'one variant per image'}")
    meter = WallMeter()
    try:
        while w.step < stop:
            t = time.perf_counter()
            tokens, labels = w.data.batch(w.step)
            wait = time.perf_counter() - t
            _maybe_inject_failure(cfg, w.step, w.rank, w.world, w.fs, w.run_dir)
            out = train_step(w, tokens, labels)
            w.step += 1
            meter.add(wait, out.target.numel() * w.world)
            if w.step == 1 or w.step % cfg.log_every == 0 or w.step == stop:
                _log(w, out, *meter.take())
            if w.step % cfg.ckpt_every == 0 or w.step == stop:
                _report(w)
    finally:
        w.data.close()


def _log(w: Worker, out: StepResult, step_s: float, wait_s: float, tokens_per_s: float) -> None:
    ce, acc = per_scale_stats(out.logits.detach(), out.target, w.begin_ends)
    values = torch.tensor([out.loss.item(), wait_s, *ce, *acc], dtype=torch.float64)
    if w.world > 1:  # average over workers (all ranks log on the same steps)
        import torch.distributed as dist
        dist.all_reduce(values)
        values /= w.world
    n = len(w.begin_ends)
    v = values.tolist()
    row = step_row(w.step, v[0], v[2:2 + n], v[2 + n:], out.lr, out.wd, out.grad_norm, tokens_per_s, step_s,
                   data_wait_s=v[1], wall_time=time.time())
    if w.rank == 0:
        w.history.append(row)
        say(f"[train] step {w.step}/{w.max_steps} loss {row['loss']:.4f} Accm {row['Accm']:.2f} lr {out.lr:.3g} "
            f"{tokens_per_s:.0f} tok/s {step_s * 1000:.0f} ms/step (data wait {v[1] * 1000:.1f} ms)")


def _report(w: Worker) -> None:
    import ray.train

    last = w.history[-1] if w.history else {}
    metrics = {"step": w.step, "loss": last.get("loss"), "Accm": last.get("Accm")}
    state = {**w.record, "step": w.step, "data": w.plan.record(w.step)}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if w.rank == 0:
            save_checkpoint(d, w.raw, w.optimizer, state, w.history)
            write_jsonl(posixpath.join(w.run_dir, METRICS_FILE), w.history, fs=w.fs)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(w.step))


def _maybe_inject_failure(cfg: TrainConfig, step: int, rank: int, world: int, fs: Any, run_dir: str) -> None:
    """Fault injection for tests: the last worker dies (process exit) once, at `fail_at_step`."""
    if not cfg.fail_at_step or step != cfg.fail_at_step or rank != world - 1:
        return
    marker = posixpath.join(run_dir, FAULT_MARKER)
    if fs.exists(marker):
        return
    fs.pipe_file(marker, f"worker {rank} exited at step {step}\n".encode())
    say(f"[train] fault injection: worker {rank} exits at step {step}")
    os._exit(1)
