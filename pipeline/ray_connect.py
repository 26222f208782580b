"""Joining Ray the same way in every job: `--address`, else RAY_ADDRESS, else a new local Ray.

Plain `ray.init()` with neither given attaches to whatever Ray this machine started last
(/tmp/ray/ray_current_cluster), e.g. a test cluster or another user's job; the documented
behaviour of our jobs is "no address: start a local Ray", hence address="local".

A new local Ray must also be the one its own processes find. Ray Train's helper actors
(PlacementGroupCleaner) look their cluster up through the state API, which without RAY_ADDRESS
takes the Ray that `ray start` recorded on this machine, or fails with a traceback when several
run. So the local Ray's GCS gets a port chosen here, and RAY_ADDRESS names it in the environment
its processes inherit: the raylet is started inside `ray.init` and passes its environment on to
every worker. The driver's own environment is restored afterwards, so that nothing this process
starts later (a subprocess, the next job after `ray.shutdown()`) is sent to a Ray that is gone.

A local Ray started here belongs to this driver alone, so it must not outlive it: Ray's own
fate-sharing stops short of the raylet's agents, which linger for a minute after `kill -9` of the
driver. A watchdog (pipeline/ray_watchdog.py) ends them. A cluster joined by address is never
watched: it is not this driver's to stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, Iterator

from pipeline import ray_watchdog
from pipeline.secrets import scrub_argv

logger = logging.getLogger(__name__)


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or "local"


def init_ray(address: str | None, **kwargs: Any) -> bool:
    """ray.init unless Ray is already initialised in this process; True when this call connected."""
    import ray

    if ray.is_initialized():
        return False
    _scrub_recorded_entrypoint()
    resolved = resolve_address(address)
    if resolved != "local":
        ray.init(address=resolved, **kwargs)
        return True
    with _local_ray_announced(kwargs.get("_node_ip_address")):
        ray.init(address="local", **kwargs)
    _watch_local_ray()
    return True


def _watch_local_ray() -> None:
    """The watchdog of the local Ray just started (module docstring). Without it the job runs as
    before, so a Ray whose internals moved only costs the clean-up after a killed driver."""
    import ray

    try:
        from ray._private import ray_constants

        node = ray._private.worker._global_node
        gcs_pid = node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process.pid
        ray_watchdog.start(node.get_session_dir_path(), gcs_pid, os.path.dirname(ray.__file__))
    except (ImportError, AttributeError, KeyError, IndexError, OSError) as e:
        logger.warning("no watchdog for the local Ray (it may outlive a killed driver): %r", e)


@contextlib.contextmanager
def _local_ray_announced(node_ip: str | None) -> Iterator[None]:
    """Inside: the next local Ray's GCS port is fixed and RAY_ADDRESS names it (module docstring)."""
    import ray

    ip = node_ip or ray.util.get_node_ip_address()
    saved = {name: os.environ.get(name) for name in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    port = _free_port(ip)
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{ip}:{port}"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _scrub_recorded_entrypoint() -> None:
    """Ray records the driver's command line (/proc, via psutil) as the job's entrypoint, shown by
    the state API and the dashboard: a secret given as `--storage-option secret=...` must not be
    in it. Ray reads it through one module attribute, which is wrapped here once."""
    try:
        import ray._private.utils as ray_utils
    except ImportError:
        return
    original = ray_utils.get_entrypoint_name
    if getattr(original, "scaletok_scrubbed", False):
        return

    def scrubbed() -> str:
        return " ".join(scrub_argv(original().split(" ")))

    scrubbed.scaletok_scrubbed = True  # type: ignore[attr-defined]
    ray_utils.get_entrypoint_name = scrubbed
