"""The Ray Train RunConfig both training jobs use: the run lives at `run_dir` on any fsspec
filesystem (local disk or S3), keeps `keep_checkpoints` checkpoints and restarts the worker group
up to `max_failures` times from the latest one. Checkpoint directories are named
`checkpoint_<step, 9 digits>` so that names sort by step."""

from __future__ import annotations

import posixpath
import re
from typing import Any

CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{int(step):09d}"


def checkpoint_step(path: str) -> int | None:
    """The step in a checkpoint directory's name, None for any other path."""
    found = CHECKPOINT_DIR.fullmatch(posixpath.basename(path.rstrip("/")))
    return int(found.group(1)) if found else None


def checkpoint_dirs(fs: Any, run_dir: str) -> list[str]:
    """A run's checkpoint directories, oldest step first ([] when the run has none)."""
    try:
        names = fs.ls(run_dir, detail=False)
    except FileNotFoundError:
        return []
    return sorted((p for p in names if checkpoint_step(p) is not None), key=lambda p: checkpoint_step(p))


def ray_run_config(name: str, run_dir: str, fs: Any, *, max_failures: int, keep_checkpoints: int):
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name, storage_path=posixpath.dirname(run_dir),
        storage_filesystem=PyFileSystem(FSSpecHandler(fs)),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints))
