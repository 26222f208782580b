"""Failures that say nothing about the input: running out of memory (host or GPU).

A sample that fails because the machine was short of memory at that moment is not a bad sample:
committing it as a `decode_error`/`encode_error` row would make that a permanent property of the
output. Such a failure fails the shard's attempt instead (the driver retries it, possibly on
another actor). Only on the shard's last allowed attempt is it recorded as a row with status
`out_of_memory`, so that one image that never fits does not cost the shard's other rows.
"""

from __future__ import annotations

OUT_OF_MEMORY_STATUS = "out_of_memory"
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


class TransientError(RuntimeError):
    """Raised to fail a shard's attempt (retried), never recorded as a row's status."""


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(error, RuntimeError) and any(t in str(error).lower() for t in _OOM_TEXT)


def release_cached_memory() -> None:
    """Hand the caching allocator's free blocks back after an out-of-memory, before retrying smaller."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
