"""The Ray Train job on tokens written by the tokenize job, two CPU workers: two runs with the same
seed give the same losses step for step, and a run stopped at a checkpoint, resumed by rerunning
the command and then hit by a worker death gives exactly the uninterrupted run's losses;
checkpoints, metrics, and sampling from the result.

Three TorchTrainer fits in all (each costs ~30 s of fixed Ray overhead), with a tiny VAR.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.var.checkpointing import load_checkpoint
from pipeline.var.train import FAULT_MARKER, fit, latest_checkpoint
from pipeline.var.train_config import TrainConfig

STEPS = 10   # 48 images over 2 ranks, 4 rows per rank and step: 6 steps per epoch, so two epochs
COMPARED = ("step", "loss", "ce_per_scale", "acc_per_scale", "lr", "wd", "grad_norm")


def _config(tokens, tmp, small_tokenizer_spec, **overrides) -> TrainConfig:
    base = dict(tokens=[str(tokens)], tokenizer_checkpoint=small_tokenizer_spec["checkpoint"], depth=2,
                var_config={"embed_dim": 64, "num_heads": 2}, batch_size=8, lr=3e-3, num_workers=2,
                cpus_per_worker=0.5, storage_path=str(tmp / "runs"), name="tiny", ckpt_every=4, log_every=1,
                max_steps=STEPS, seed=5)
    return TrainConfig(**{**base, **overrides})


def _losses(history):
    return [{k: row[k] for k in COMPARED} for row in history]


@pytest.fixture(scope="module")
def runs(fresh_ray, job_token_dir, tmp_path_factory, small_tokenizer_spec):  # fresh_ray: tests/conftest.py
    tmp = tmp_path_factory.mktemp("train")
    straight_cfg = _config(job_token_dir, tmp, small_tokenizer_spec, name="straight")
    straight = fit(straight_cfg)
    # Stopped after the checkpoint of step 4, then the same command again; in the rerun worker 1
    # dies (process exit) at step 6 and the group restarts from that checkpoint once more.
    stopped_cfg = _config(job_token_dir, tmp, small_tokenizer_spec, name="resumed", stop_at_step=4)
    stopped = fit(stopped_cfg)
    resumed_cfg = dataclasses.replace(stopped_cfg, stop_at_step=0, fail_at_step=6)
    resumed = fit(resumed_cfg)
    return {"straight": (straight_cfg, straight), "stopped": (stopped_cfg, stopped), "resumed": (resumed_cfg, resumed)}


def test_two_runs_are_equal_step_for_step_and_resume_exactly(runs):
    _, straight = runs["straight"]
    _, stopped = runs["stopped"]
    resumed_cfg, resumed = runs["resumed"]
    assert straight.final_step == STEPS and stopped.final_step == 4 and resumed.final_step == STEPS
    assert [r["step"] for r in resumed.history] == list(range(1, STEPS + 1))  # redone steps logged once
    # a second run from scratch (the stopped one) repeats the first one's losses exactly ...
    assert _losses(stopped.history) == _losses(straight.history[:4])
    # ... and the stopped, resumed, crashed and restarted run continues it exactly
    assert _losses(resumed.history) == _losses(straight.history)
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]
    fault = open(f"{resumed.run_dir}/{FAULT_MARKER}").read()
    assert "worker 1 exited at step 6" in fault  # the failure really happened and was recovered
    ckpt = load_checkpoint(latest_checkpoint(resumed_cfg))
    assert ckpt.step == STEPS and ckpt.state["tokenizer"]["name"] == "var-vqvae"
    assert ckpt.state["var_config"]["patch_nums"] == [1, 2, 3, 4]
    # the data position: step 10 is batch 4 of epoch 1 (6 steps per epoch)
    assert {k: ckpt.state["data"][k] for k in ("epoch", "batch_in_epoch", "steps_per_epoch", "world")} == \
        {"epoch": 1, "batch_in_epoch": 4, "steps_per_epoch": 6, "world": 2}
    # Adam's step counter: 10 updates, carried across the stop and the restart, never restarted at 0
    assert {float(s["step"]) for s in ckpt.optimizer["state"].values()} == {float(STEPS)}


def test_metrics_are_wall_figures_with_the_data_wait(runs):
    _, straight = runs["straight"]
    run_dir = straight.run_dir
    for name in ("metrics.jsonl", "metrics.png", "train_config.yaml"):
        assert open(f"{run_dir}/{name}", "rb").read(), name
    assert len(open(f"{run_dir}/metrics.jsonl").read().splitlines()) == STEPS
    rows = straight.history
    assert len(rows[0]["acc_per_scale"]) == 4
    for row in rows:
        assert 0 <= row["data_wait_s"] <= row["step_s"]
        tokens_per_step = 8 * 30
        assert row["tokens_per_s"] == pytest.approx(tokens_per_step / row["step_s"], rel=0.05)
    # the windows cover the wall clock without gaps: checkpoint writes and data waits count
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    assert times[-1] - times[0] == pytest.approx(sum(r["step_s"] for r in rows[1:]), rel=0.1, abs=0.05)


def test_sample_job_writes_a_png_grid_from_the_run(runs, tmp_path):
    from PIL import Image

    from pipeline.cli import main

    _, result = runs["straight"]
    out = tmp_path / "grid.png"
    code = main(["sample", "--checkpoint", result.run_dir, "--classes", "1,2", "--per-class", "3",
                 "--cfg", "1.5", "--top-k", "50", "--top-p", "0.9", "--out", str(out)])
    assert code == 0
    with Image.open(out) as im:
        assert im.size == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2)
    tokens = np.load(tmp_path / "grid.npz")
    assert tokens["tokens"].shape == (6, 30) and tokens["labels"].tolist() == [1, 1, 1, 2, 2, 2]
