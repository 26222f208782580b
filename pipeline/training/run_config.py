"""The Ray Train RunConfig both training jobs use: the run lives at `run_dir` on any fsspec
filesystem (local disk or S3), keeps `keep_checkpoints` checkpoints and restarts the worker group
up to `max_failures` times from the latest one. Checkpoint directories are named
`checkpoint_<step, 9 digits>` so that names sort by step.

Errors no restart can cure. A worker that meets bad data (a damaged token file, labels outside the
model's classes) fails the same way on every attempt; Ray Train would still restart the group
`max_failures` times (~10 s each here) and then raise a WorkerGroupError whose message is the
workers' tracebacks, which a one-line CLI error cuts off before naming the file. Ray Train's
FailureConfig cannot tell errors apart, so `final_errors` are recognised by a callback on the
controller (`FinalErrors.after_exception`, run on every poll that finds a worker error, before the
failure policy decides): it raises the worker's own exception there as a ControllerError, which
the failure policy does not retry (only worker-group start-up failures are retryable controller
errors; raised as such, the controller does not log it a second time as a bug of its own loop).
`final_error_of` finds the worker's exception again in what `trainer.fit()` raises, so the driver
can raise it as itself.
"""

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


def ray_run_config(name: str, run_dir: str, fs: Any, *, max_failures: int, keep_checkpoints: int,
                   final_errors: tuple[type[BaseException], ...] = ()):
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name, storage_path=posixpath.dirname(run_dir),
        storage_filesystem=PyFileSystem(FSSpecHandler(fs)),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
        callbacks=[final_errors_callback(final_errors)] if final_errors else None)


def worker_exception(error: BaseException) -> BaseException:
    """The exception a worker's train function raised: Ray Train returns it wrapped, with its
    traceback as text (UserExceptionWithTraceback._base_exc in Ray 2.60); anything else as is."""
    inner = getattr(error, "_base_exc", None)
    return inner if isinstance(inner, BaseException) else error


def final_error_of(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The worker exception of one of `kinds` that `trainer.fit()`'s `error` carries, else None:
    as the controller's failure (FinalErrors raised it there) or, should a Ray version skip the
    callback, among the worker group's failures."""
    if not kinds:
        return None
    candidates = [getattr(error, "controller_failure", None),
                  *(getattr(error, "worker_failures", None) or {}).values()]
    for found in candidates:
        if found is not None and isinstance(worker_exception(found), kinds):
            return worker_exception(found)
    return None


def final_errors_callback(kinds: tuple[type[BaseException], ...]):
    """A Ray Train UserCallback that fails the run at once when a worker raised one of `kinds`."""
    from ray.train import ControllerError
    from ray.train.v2.api.callback import UserCallback

    class FinalErrors(UserCallback):
        def __init__(self, kinds: tuple[type[BaseException], ...]) -> None:
            self.kinds = tuple(kinds)

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, BaseException]) -> None:
            for _, error in sorted(worker_exceptions.items()):
                found = worker_exception(error)
                if isinstance(found, self.kinds):
                    raise ControllerError(found)  # not retried (see the module doc)

    return FinalErrors(kinds)
