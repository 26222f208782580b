"""A driver's own local Ray does not outlive it (pipeline/ray_watchdog.py).

Real drivers in subprocesses, started the way the jobs start Ray (`init_ray` without an address),
each with one actor. A session's processes are the driver's descendants plus every process that
names the session directory or holds a file in it open (workers and agents rename themselves and
are orphaned when the raylet dies, so neither the name nor the parent would find them).
- `kill -9` of such a driver: every process of its session is gone within 60 s, but a driver
  that joined that Ray by address and a `tail -f` of its logs (someone's programs) are left
  alone. A driver that joined by address, killed, takes nothing with it.
- `ray.shutdown()`: the session and its watchdog are gone while the driver lives on, and the
  driver then exits cleanly.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 60  # the promise: a killed driver's local Ray is gone within a minute
START_S = 180  # a driver's Ray up, on a loaded 2-core machine

# argv[1]: an address to join, else a local Ray of its own. Then one stdin command a line:
# "ping" (the actor answers), "shutdown" (ray.shutdown(), the driver lives on); EOF: exit.
DRIVER = r"""
import json, os, sys
import ray
from pipeline.ray_connect import init_ray

if len(sys.argv) > 1:
    init_ray(sys.argv[1], logging_level="ERROR")
else:
    init_ray(None, num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.2", logging_level="ERROR")

@ray.remote(num_cpus=0)
class Pinger:
    def pid(self):
        return os.getpid()

actor = Pinger.remote()
ray.get(actor.pid.remote())
node = ray._private.worker._global_node
print(json.dumps({"session": node.get_session_dir_path(), "gcs": node.gcs_address}), flush=True)
for line in sys.stdin:
    if line.strip() == "ping":
        print("pong", ray.get(actor.pid.remote()), flush=True)
    elif line.strip() == "shutdown":
        ray.shutdown()
        print("shut", flush=True)
"""


class Driver:
    """One driver subprocess; its stdout lines arrive through a queue (reads never hang a test)."""

    def __init__(self, tmp_path: Path, name: str, *args: str):
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        env.pop("RAY_ADDRESS", None)
        self.stderr = tmp_path / f"{name}.err"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=ROOT, env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.info = json.loads(self.line(START_S))
        self.session = self.info["session"]

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        assert line, f"driver {self.proc.pid}: no output; stderr:\n{self.stderr.read_text()[-3000:]}"
        return line

    def send(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.line(60)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


class Session:
    """The processes of one Ray session seen so far (kept by pid and start time: pids get reused)."""

    def __init__(self, session_dir: str, *known: psutil.Process):
        self.dir = session_dir
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.add(*known)

    def add(self, *procs: psutil.Process) -> None:
        for proc in procs:
            try:
                self.seen.setdefault((proc.pid, proc.create_time()), proc)
            except psutil.Error:
                pass

    def alive(self, exclude: tuple[int, ...] = ()) -> list[str]:
        """Every live process of the session (zombies are gone: init here does not reap them)."""
        self.add(*(p for p in psutil.process_iter() if p.pid != os.getpid() and self._names_session(p)))
        out = []
        for proc in self.seen.values():
            try:
                if proc.pid not in exclude and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{proc.pid} {proc.name()} {' '.join(proc.cmdline())[:150]}")
            except psutil.Error:
                pass
        return out

    def _names_session(self, proc: psutil.Process) -> bool:
        try:
            return (os.path.basename(self.dir) in " ".join(proc.cmdline())
                    or any(f.path.startswith(self.dir + os.sep) for f in proc.open_files()))
        except psutil.Error:
            return False

    def wait_gone(self, timeout: float, exclude: tuple[int, ...] = ()) -> float:
        """Seconds until nothing of the session is left; fails with the survivors after timeout."""
        start = time.monotonic()
        while alive := self.alive(exclude):
            if time.monotonic() - start > timeout:
                pytest.fail(f"alive {timeout:.0f} s later:\n" + "\n".join(alive))
            time.sleep(0.5)
        return time.monotonic() - start

    def kill_all(self) -> None:
        """Never leave a test's Ray behind on a shared machine, whatever happened."""
        for proc in self.seen.values():
            try:
                if proc.is_running():
                    proc.kill()
            except psutil.Error:
                pass


def watchdogs(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if any("ray_watchdog" in part for part in _cmdline(p))]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


@pytest.fixture
def cleanup():
    sessions: list[Session] = []
    drivers: list[Driver] = []
    yield sessions, drivers
    for driver in drivers:
        if driver.proc.poll() is None:
            driver.proc.kill()
        driver.proc.wait()
    for session in sessions:
        session.kill_all()


def own_ray(tmp_path, cleanup, name: str) -> tuple[Driver, Session]:
    """A driver that starts its own local Ray (and so its watchdog), cleaned up by `cleanup`."""
    sessions, drivers = cleanup
    driver = Driver(tmp_path, name)
    drivers.append(driver)
    session = Session(driver.session, *driver.descendants())
    sessions.append(session)
    assert len(watchdogs(driver.descendants())) == 1, "init_ray started no watchdog for its local Ray"
    return driver, session


def test_killed_driver_takes_its_local_ray_along_and_a_joined_one_does_not(tmp_path, cleanup):
    _, drivers = cleanup
    owner, session = own_ray(tmp_path, cleanup, "owner")

    # a driver that joined the owner's Ray by address: no watchdog; killed, it stops nothing
    guest = Driver(tmp_path, "guest", owner.info["gcs"])
    drivers.append(guest)
    assert guest.session == owner.session
    assert not watchdogs(guest.descendants()), "a driver that joined by address must not watch the cluster"
    guest.proc.send_signal(signal.SIGKILL)
    guest.proc.wait()
    time.sleep(2)  # a watchdog acts within milliseconds
    assert owner.send("ping").startswith("pong"), "the owner's Ray went away with a guest driver"

    # the owner killed: its Ray goes; a driver still joined to it and a `tail -f` of its logs are
    # someone's programs and stay
    guest = Driver(tmp_path, "guest2", owner.info["gcs"])
    drivers.append(guest)
    tail = subprocess.Popen(["tail", "-f", os.path.join(owner.session, "logs", "raylet.out")],
                            stdout=subprocess.DEVNULL)
    try:
        owner.proc.send_signal(signal.SIGKILL)
        owner.proc.wait()
        took = session.wait_gone(LIMIT_S, exclude=(guest.proc.pid, tail.pid))
        print(f"session gone {took:.1f} s after kill -9 of its driver")
        # (the guest may end by itself on losing its Ray; killed by a signal it was not)
        assert guest.proc.poll() not in (-signal.SIGTERM, -signal.SIGKILL), "the watchdog killed a joined driver"
        assert tail.poll() is None, "the owner's watchdog killed a `tail -f` of its logs"
    finally:
        tail.kill()
        tail.wait()


def test_shutdown_leaves_no_session_and_no_watchdog(tmp_path, cleanup):
    driver, session = own_ray(tmp_path, cleanup, "driver")

    assert driver.send("shutdown") == "shut\n"
    # the driver lives on: its watchdog (FOLLOW_S) and everything of the session go all the same
    took = session.wait_gone(40, exclude=(driver.proc.pid,))
    print(f"session and watchdog gone {took:.1f} s after ray.shutdown()")
    assert driver.proc.poll() is None
    driver.proc.stdin.close()
    assert driver.proc.wait(timeout=60) == 0, driver.stderr.read_text()[-3000:]
    assert not session.alive()
