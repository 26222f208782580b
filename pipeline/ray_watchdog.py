"""A killed driver's own local Ray goes away with it.

Ray already ties the processes a driver starts (GCS, raylet, dashboard, monitors) to the driver:
they get PR_SET_PDEATHSIG=SIGKILL. Their own children do not. After `kill -9` of the driver, the
raylet's dashboard agent and runtime-env agent notice the dead raylet at once but then block for
Ray's hard-coded 60 s trying to report that to the dead GCS (`publish_error_to_driver`), and
any other process left behind (workers, the dashboard's modules) lives as long as Ray's own checks
let it. Measured on Ray 2.60: the two agents outlived the driver by 61-62 s.

So `init_ray` starts this file as a tiny watchdog next to every local Ray it starts. It blocks on
two pidfds, the driver and the session's GCS, so it costs nothing while it waits:
- the driver dies: SIGTERM to every process of that session, SIGKILL to those left after a few
  seconds;
- the GCS ends and the driver lives on (`ray.shutdown()`): Ray has cleaned up after itself, and
  the watchdog exits within FOLLOW_S.

A process belongs to the session when it is a Ray process (the interpreter that runs Ray, or a
binary shipped with Ray) and its command line names the session directory or it holds a file
inside it open (every Ray process writes its logs there; workers and agents rename themselves, so
their command lines no longer say). A log shipper or `tail -f` on those logs is no Ray process,
and another driver that joined this Ray by address is someone else's program: both are left alone.

The watchdog runs as a script (`python -I -S ray_watchdog.py ...`): standard library only.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 3.0  # SIGTERM -> SIGKILL
FOLLOW_S = 10.0  # the GCS is gone: how long a dying driver may take to be gone too
POLL_S = 1.0  # only where pidfds are missing (Linux < 5.3)
DRIVER_LOG = "/python-core-driver-"  # logs/python-core-driver-<job>_<pid>.log: a driver's own


def start(session_dir: str, gcs_pid: int, ray_dir: str) -> subprocess.Popen | None:
    """The watchdog of this driver's local Ray session; None where there is no /proc (not Linux)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), str(gcs_pid), session_dir, ray_dir],
        # /dev/null: a parent reading the driver's output must see EOF when the driver dies;
        # a new session: Ctrl-C or a closed terminal that stops the driver must not stop this too
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # reaped as soon as it exits after ray.shutdown(), so no zombie is left for the driver's lifetime
    threading.Thread(target=proc.wait, name="ray-watchdog-reaper", daemon=True).start()
    return proc


def main(driver: int, gcs: int, session_dir: str, ray_dir: str) -> None:
    if _driver_died(driver, gcs, session_dir):
        _stop_session(session_dir, ray_dir)


def _driver_died(driver: int, gcs: int, session_dir: str) -> bool:
    """Block until the session's GCS or the driver is gone; True when the driver died.

    A killed driver's threads exit one by one, and the GCS (pdeathsig'd by the thread that
    started it) can be gone while the driver still is not: after the GCS, the driver gets
    FOLLOW_S to follow. A driver that lives on has ended its session (`ray.shutdown()`)."""
    driver_fd, gcs_fd = _pidfd(driver), _pidfd(gcs)

    def driver_gone() -> bool:  # this process is reparented once the whole driver has exited
        return os.getppid() != driver

    _wait(lambda: driver_gone() or not _names_session(gcs, session_dir), [driver_fd, gcs_fd], None)
    return _wait(driver_gone, [driver_fd], FOLLOW_S)


def _wait(done, fds: list[int | None], timeout: float | None) -> bool:
    """Wait until done() (checked whenever one of the pidfds fires), at most timeout seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        step = left if None not in fds else min(POLL_S, left or POLL_S)  # without pidfds: poll
        select.select([fd for fd in fds if fd is not None], [], [], step)
    return True


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _names_session(pid: int, session_dir: str) -> bool:
    """Running (a zombie's cmdline is empty) and the process of that session."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return session_dir.encode() in f.read()
    except OSError:
        return False


def _stop_session(session_dir: str, ray_dir: str) -> None:
    _signal_all(session_dir, ray_dir, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and session_processes(session_dir, ray_dir):
        time.sleep(0.2)
    _signal_all(session_dir, ray_dir, signal.SIGKILL)


def _signal_all(session_dir: str, ray_dir: str, sig: int) -> None:
    for pid in session_processes(session_dir, ray_dir):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def session_processes(session_dir: str, ray_dir: str) -> list[int]:
    """The live Ray processes of that session (module doc), this one excepted."""
    ray_exes = (os.path.realpath(sys.executable), os.path.realpath(ray_dir) + os.sep)
    real_dir = os.path.realpath(session_dir)  # what /proc/PID/fd links name
    found = {}
    for name in os.listdir("/proc"):
        files = _session_files(int(name), session_dir, real_dir, ray_exes) if name.isdigit() else None
        if files is not None and int(name) != os.getpid():
            found[int(name)] = files
    # a driver that joined this Ray by address (it writes its own core-driver log here) is
    # someone's program: left alone, unless the session started it (a `ray job` entrypoint)
    return [pid for pid, files in found.items()
            if not any(DRIVER_LOG in f for f in files) or _parent(pid) in found]


def _session_files(pid: int, session_dir: str, real_dir: str, ray_exes: tuple[str, str]) -> list[str] | None:
    """The files of the session that a Ray process holds open; None: not a process of the session."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        if exe != ray_exes[0] and not exe.startswith(ray_exes[1]):
            return None
        fds = f"/proc/{pid}/fd"
        inside = (session_dir + os.sep, real_dir + os.sep)
        files = [t for t in (_target(f"{fds}/{fd}") for fd in os.listdir(fds)) if t.startswith(inside)]
        return files if files or _names_session(pid, session_dir) else None
    except OSError:  # gone, or not ours to look at
        return None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _target(link: str) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return ""


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
