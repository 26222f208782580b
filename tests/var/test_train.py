"""The Ray Train job on tokens written by the tokenize job: two CPU workers, a worker killed
mid-run, resume with the same command, checkpoints, metrics, and sampling from the result.

Two TorchTrainer fits in all (each costs ~30 s of fixed Ray overhead), with a tiny VAR.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.var.checkpointing import load_checkpoint
from pipeline.var.train import FAULT_MARKER, fit, latest_checkpoint
from pipeline.var.train_config import TrainConfig


def _config(tokens, tmp, small_tokenizer_spec, **overrides) -> TrainConfig:
    base = dict(tokens=str(tokens), tokenizer_checkpoint=small_tokenizer_spec["checkpoint"], depth=2,
                var_config={"embed_dim": 64, "num_heads": 2}, batch_size=8, lr=3e-3, num_workers=2,
                cpus_per_worker=0.5, storage_path=str(tmp / "runs"), name="tiny", ckpt_every=4, log_every=1)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def first_run(fresh_ray, job_token_dir, tmp_path_factory, small_tokenizer_spec):  # fresh_ray: tests/conftest.py
    tmp = tmp_path_factory.mktemp("train")
    # Worker 1 exits (process death) at step 5, after the checkpoint of step 4.
    cfg = _config(job_token_dir, tmp, small_tokenizer_spec, max_steps=8, fail_at_step=5)
    return cfg, fit(cfg)


def test_two_workers_learn_and_survive_a_worker_death(first_run):
    cfg, result = first_run
    assert result.max_steps == 8 and result.final_step == 8
    steps = [row["step"] for row in result.history]
    assert steps == list(range(1, 9))  # the steps redone after the restart are logged once
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert len(result.history[0]["acc_per_scale"]) == 4
    run_dir = result.run_dir
    fault = open(f"{run_dir}/{FAULT_MARKER}").read()
    assert "worker 1 exited at step 5" in fault  # the failure really happened and was recovered
    ckpt = load_checkpoint(latest_checkpoint(cfg))
    assert ckpt.step == 8 and ckpt.state["tokenizer"]["name"] == "var-vqvae"
    assert ckpt.state["var_config"]["patch_nums"] == [1, 2, 3, 4]
    # Adam's step counter: 8 updates, restored across the restart (4 + 4), not restarted at 0.
    assert {float(s["step"]) for s in ckpt.optimizer["state"].values()} == {8.0}
    for name in ("metrics.jsonl", "metrics.png", "train_config.yaml"):
        assert open(f"{run_dir}/{name}", "rb").read(), name
    assert len(open(f"{run_dir}/metrics.jsonl").read().splitlines()) == 8


def test_rerun_resumes_from_the_saved_step_with_optimizer_state(first_run):
    cfg, first = first_run
    before = load_checkpoint(latest_checkpoint(cfg))
    # Same storage_path and name: resumes. One worker this time (the checkpoint is DDP-free).
    again = dataclasses.replace(cfg, max_steps=12, num_workers=1, fail_at_step=0)
    result = fit(again)
    assert result.final_step == 12
    assert [r["step"] for r in result.history] == list(range(1, 13))
    assert result.history[:8] == first.history
    after = load_checkpoint(latest_checkpoint(again))
    assert {float(s["step"]) for s in after.optimizer["state"].values()} == {12.0}
    assert before.optimizer["param_groups"][0]["betas"] == after.optimizer["param_groups"][0]["betas"]
    changed = [k for k in before.model if not torch.equal(before.model[k], after.model[k])]
    assert "head.weight" in changed


def test_sample_job_writes_a_png_grid_from_the_run(first_run, tmp_path):
    from PIL import Image

    from pipeline.cli import main

    cfg, result = first_run
    out = tmp_path / "grid.png"
    code = main(["sample", "--checkpoint", result.run_dir, "--classes", "1,2", "--per-class", "3",
                 "--cfg", "1.5", "--top-k", "50", "--top-p", "0.9", "--out", str(out)])
    assert code == 0
    with Image.open(out) as im:
        assert im.size == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2)
    tokens = np.load(tmp_path / "grid.npz")
    assert tokens["tokens"].shape == (6, 30) and tokens["labels"].tolist() == [1, 1, 1, 2, 2, 2]
