"""What every benchmark shares: the conditions stamp (machine, versions, date, load), JSON-lines
output, a private local Ray, and a WebDataset corpus of real JPEG photos.

Benchmarks are scripts (`python benchmarks/<name>.py`); this module puts the repository root on
sys.path (and PYTHONPATH, for Ray workers) so they run from anywhere without an install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
# Ray's token auth must be the same in every Ray process; these benchmarks start their own Ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULTS = Path(__file__).resolve().parent / "results"
RAY_NODE_IP = "127.0.0.2"  # keeps Ray on loopback (Ray rewrites 127.0.0.1 to the external address)


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by whatever runs on the machine now, measured over `seconds` from
    /proc/stat (None where it does not exist). Unlike the load average, which trails a finished
    run for minutes, this tells whether *now* something competes with the benchmark."""
    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)
    first = read()
    time.sleep(seconds)
    second = read()
    if first is None or second is None or second[1] == first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def conditions(device: str = "cpu") -> dict[str, Any]:
    """The stamp every result line carries: enough to tell whether two numbers are comparable."""
    import torch

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:  # pragma: no cover
        ray_version = None
    cpu_model = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu_model)
        all_flags = next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
        # The ones that decide CPU encoder speed (bf16 is emulated without avx512_bf16 / AMX).
        flags = sorted(f for f in all_flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cpus = os.cpu_count() or 1
    busy = busy_cores()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model,
        "cpu_flags": flags,
        "cpus": cpus,
        "load_1m_at_start": round(load1, 2) if load1 is not None else None,
        "busy_cores_at_start": round(busy, 2) if busy is not None else None,
        # Something else used more than a fifth of the machine just before we started: the
        # timings are contended. (The load average is kept for the record; it lags by minutes.)
        "contended": bool(busy > 0.2 * cpus) if busy is not None else bool(load1 is not None and load1 > 0.5 * cpus),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray_version,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def start_local_ray(num_cpus: float, num_gpus: int = 0) -> None:
    """A private Ray for this process (never joins another cluster on the machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address=RAY_NODE_IP, logging_level="WARNING")


def write_jpeg_corpus(out_dir: str | os.PathLike, num_shards: int, per_shard: int, max_side: int,
                      seed: int = 0) -> list[str]:
    """Shards of RGB JPEGs (quality 90, 4:2:0): the bundled sample corpus's crops of real photos
    (long side drawn in [0.15 * max_side, max_side]), all as JPEG. Returns the shard paths."""
    import webdataset as wds

    from pipeline.sources import sample_corpus as sc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        path = out / f"bench-{shard:06d}.tar"
        with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=sc.TAR_MTIME) as writer:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                plan = dataclasses.replace(sc.plan_sample(i, seed, max_side), ext="jpg", mode="RGB")
                writer.write({"__key__": sc.sample_key(i), "jpg": sc.encode_image(sc.render_sample(plan), "jpg"),
                              "cls": str(plan.label).encode()})
        paths.append(str(path))
    return paths


def shard_pattern(paths: list[str]) -> str:
    return "::".join(paths)


@contextlib.contextmanager
def two_raylets(cpus_per_node: int = 2) -> Iterator[str]:
    """Two raylets on this machine (`ray start --head` + `ray start --address`, as on a real
    cluster), in a private temp dir so no other Ray on the machine is touched or joined.
    Yields the address to pass as `--address`. Each node is stopped through its own process."""
    import socket

    bin_dir = Path(sys.executable).parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"{RAY_NODE_IP}:{port}"
    temp_dir = tempfile.mkdtemp(prefix="stbench", dir="/tmp")  # short: socket paths must fit 107 chars
    common = [str(bin_dir / "ray"), "start", "--block", "--node-ip-address", RAY_NODE_IP,
              "--num-cpus", str(cpus_per_node), "--object-store-memory", str(200 << 20), "--disable-usage-stats"]
    logs = open(os.path.join(temp_dir, "start.log"), "w")
    procs = [subprocess.Popen(common + ["--head", "--port", str(port), "--include-dashboard", "false",
                                        "--temp-dir", temp_dir], stdout=logs, stderr=subprocess.STDOUT,
                              start_new_session=True)]
    try:
        _wait_nodes(address, 1)
        procs.append(subprocess.Popen(common + ["--address", address], stdout=logs, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        _wait_nodes(address, 2)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_nodes(address: str, count: int, timeout_s: float = 180) -> None:
    script = ("import ray, time, sys\n"
              f"ray.init(address='{address}', logging_level='ERROR')\n"
              "t = time.time()\n"
              f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.time() - t < 60: time.sleep(0.5)\n"
              f"sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= {count} else 1)\n")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120).returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes")
