"""One line of progress from a Ray Train worker, printed once.

Ray Train (v2) replaces `print` in its workers with a version that logs the message *and*, when
Ray has wrapped `sys.stdout`, prints it as well, so every progress line reached the driver twice.
Writing to the process's own stdout stream takes the plain path: one line, which Ray's log
monitor forwards to the driver as usual (and which is just a print outside Ray)."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    stream = sys.__stdout__ or sys.stdout
    print(message, file=stream, flush=True)
