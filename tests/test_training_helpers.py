"""Checkpoint directory names shared by both training jobs: they sort by step, and only they count."""

from __future__ import annotations

import fsspec

from pipeline.training.run_config import checkpoint_dir_name, checkpoint_dirs, checkpoint_step


def test_checkpoint_names_sort_by_step_and_others_are_ignored(tmp_path):
    for step in (1000, 20, 3):
        (tmp_path / checkpoint_dir_name(step)).mkdir()
    for other in ("checkpoint_", "checkpoint_12a", "metrics.png", "checkpoint_7.tmp"):
        (tmp_path / other).mkdir()
    fs = fsspec.filesystem("file")
    dirs = checkpoint_dirs(fs, str(tmp_path))
    assert [checkpoint_step(d) for d in dirs] == [3, 20, 1000]
    assert checkpoint_dir_name(20) == "checkpoint_000000020"
    assert checkpoint_step("s3://b/run/checkpoint_000000020/") == 20 and checkpoint_step("run/metrics.png") is None
    assert checkpoint_dirs(fs, str(tmp_path / "missing")) == []
