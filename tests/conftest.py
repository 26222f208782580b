"""Shared test fixtures: a real local Ray cluster and a real S3-protocol server on loopback.

Ray's token authentication must be set identically in every Ray process of a run, so the mode is
fixed here before anything imports Ray (subprocesses inherit it). 127.0.0.2 keeps Ray's traffic
on loopback (Ray rewrites 127.0.0.1 to the host's external address).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

FIXTURES = Path(__file__).parent / "fixtures"
RAY_NODE_IP = "127.0.0.2"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def ray_cluster():
    """A single-node local Ray with 4 logical CPUs (oversubscribed on purpose: actor pools plus
    Ray Data read tasks must not deadlock on a 2-core machine)."""
    import ray

    if not ray.is_initialized():
        _start_local_ray()
    yield ray
    ray.shutdown()


def _start_local_ray() -> None:
    import ray

    # address="local": never attach to another Ray on this machine (ray_current_cluster)
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address=RAY_NODE_IP,
             logging_level="WARNING", log_to_driver=False)


@pytest.fixture(scope="module")
def fresh_ray(ray_cluster):
    """The session's local Ray, restarted for this module (later modules keep the new one).

    Seen in the full suite with Ray 2.60: after some 100 tests' worth of actors in one driver
    session, the driver never received the ALIVE notification of a Ray Train controller actor
    that had started (its log said so), and trainer.fit() waited forever; the same tests pass
    in a fresh session. Ray Train test modules therefore start from a new session."""
    ray_cluster.shutdown()
    _start_local_ray()
    yield ray_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server in its own process (Ray workers and CLI subprocesses reach it too).

    Yields a dict: endpoint_url, storage_options (for fsspec/s3fs) and a ready s3fs filesystem.
    """
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    import s3fs

    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(use_listings_cache=False, **options)
    try:
        yield {"endpoint_url": endpoint, "storage_options": options, "fs": fs}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
