"""What kind of failure an error is, and how a command line shows it.

Two kinds, each with its exit code:
- `UsageError` (exit 2): the command line, a config or an input is wrong (a missing file, an
  unknown tokenizer, a checkpoint that is not one). The user fixes the invocation and reruns.
- anything else (exit 1): the job ran and failed.

Library code keeps raising its own types (ValueError, CheckpointError, ...). A job marks the part
of its work where such an error can only mean bad input with `checking_inputs()`, which turns
them into `UsageError`; the CLI (`pipeline.cli.run_job`) prints every error as one line and, with
`--debug`, the traceback too.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

USAGE_EXIT = 2
FAILED_EXIT = 1
# Longest message printed without --debug: a checkpoint mismatch can list hundreds of keys.
MAX_MESSAGE_CHARS = 600

# Where a store's give-up line travels inside an error: an attribute of the exception, or a key of
# a botocore ClientError's response["Error"] (pipeline/s3_store.py puts it there).
GIVE_UP_KEY = "ScaletokGiveUp"

# Errors that, raised while a job reads its command line, configs and inputs, mean bad input.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class UsageError(Exception):
    """Bad usage or input (exit 2); the message says what to fix."""

    exit_code = USAGE_EXIT


class JobFailed(Exception):
    """A job that ran and failed (exit 1); the message says which step and why."""

    exit_code = FAILED_EXIT


@contextlib.contextmanager
def checking_inputs(*also: type[BaseException]) -> Iterator[None]:
    """Inside: an input-kind error (`INPUT_ERRORS` and `also`) is the user's input problem and
    leaves as `UsageError` with the same message, the original chained for --debug."""
    try:
        yield
    except UsageError:
        raise
    except (*INPUT_ERRORS, *also) as exc:
        raise UsageError(one_line(exc)) from exc


def exit_code(exc: BaseException) -> int:
    return int(getattr(exc, "exit_code", FAILED_EXIT))


def give_up_of(exc: BaseException | None) -> str | None:
    """The give-up line a store's retry policy attached to `exc` or to anything in its
    cause/context chain (s3fs turns the botocore error into an OSError whose cause it is)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        line = getattr(exc, GIVE_UP_KEY, None)
        response = getattr(exc, "response", None)
        if line is None and isinstance(response, dict):
            line = (response.get("Error") or {}).get(GIVE_UP_KEY)
        if line:
            return line
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(exc: BaseException) -> str:
    """The error's message on one line: whitespace collapsed, KeyError's repr quotes dropped, an
    OSError as "reason: path", an empty message as the type's name, very long ones shortened;
    a store's give-up (retries exhausted) as its own line, which names store and operation."""
    give_up = give_up_of(exc)
    if give_up:
        text = give_up
    elif isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError("x")) is "'x'"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc)
    text = " ".join(text.split())
    if not text:
        text = type(exc).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS - 1] + "…"
    return text
