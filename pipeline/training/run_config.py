"""The Ray Train RunConfig both training jobs use: the run lives at `run_dir` on any fsspec
filesystem (local disk or S3), keeps `keep_checkpoints` checkpoints and restarts the worker group
up to `max_failures` times from the latest one."""

from __future__ import annotations

import posixpath
from typing import Any


def ray_run_config(name: str, run_dir: str, fs: Any, *, max_failures: int, keep_checkpoints: int):
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name, storage_path=posixpath.dirname(run_dir),
        storage_filesystem=PyFileSystem(FSSpecHandler(fs)),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints))
