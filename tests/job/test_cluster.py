"""Two raylets on one machine (`ray start --head` + `ray start --address`), each with one logical
GPU, driven by the exact command line of the issue in a subprocess (`--address`, `--config`).
The GPU path runs: actors ask for num_gpus=1, so there is one per raylet, and fall back to the
CPU because the GPUs are logical."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.sources.sample_corpus import write_sample_corpus
from tests.job.conftest import VAR_CONFIG

RAY_NODE_IP = "127.0.0.2"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground: terminating it stops exactly this node's
    # processes (`ray stop` would stop every Ray on the machine).
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address", RAY_NODE_IP,
                             "--num-cpus", "1", "--num-gpus", "1", "--object-store-memory", str(150 << 20),
                             "--disable-usage-stats", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def two_raylets(tmp_path_factory):
    logs = tmp_path_factory.mktemp("raylogs")
    port = _free_port()
    address = f"{RAY_NODE_IP}:{port}"
    # Its own temp dir: `ray start --head` records itself in <temp dir>/ray_current_cluster, and a
    # record left in the default /tmp/ray would make every later plain `ray.init()` try to join it.
    temp_dir = tempfile.mkdtemp(prefix="stray", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    head = _ray_start(["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir],
                      logs / "head.log")
    procs = [head]
    try:
        _wait_nodes(address, 1, head)
        procs.append(_ray_start(["--address", address], logs / "worker.log"))
        _wait_nodes(address, 2, head)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_nodes(address: str, count: int, head: subprocess.Popen) -> None:
    script = ("import ray, time, sys\n"
              f"ray.init(address='{address}', logging_level='ERROR')\n"
              "t = time.time()\n"
              f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.time() - t < 90: time.sleep(0.5)\n"
              f"sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= {count} else 1)\n")
    deadline = time.time() + 120
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError("ray start --head exited")
        if subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=150).returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes")


def test_exact_cli_on_two_raylets(two_raylets, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, num_shards=6, samples_per_shard=2, max_side=80)
    tok_json = tmp_path / "var.json"
    tok_json.write_text(json.dumps(VAR_CONFIG))
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(yaml.safe_dump({"batch_size": 2, "max_shard_retries": 2, "progress": False,
                                         "startup_wait_s": 120}))
    out = tmp_path / "out"
    pattern = f"{corpus}/sample-{{000000..000002}}.tar::{corpus}/sample-00000[345].tar"
    cmd = [str(BIN / "scaletok"), "tokenize", "--input", pattern, "--output", str(out),
           "--tokenizer", "var-vqvae", "--tokenizer-config", str(tok_json), "--image-size", "64",
           "--patch-nums", "1,2,3,4", "--num-actors", "2", "--gpus-per-actor", "1", "--cpus-per-actor", "1",
           "--precision", "fp32", "--address", two_raylets, "--config", str(job_yaml)]
    env = dict(os.environ)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6/6 committed" in run.stdout
    manifests = [json.loads(p.read_text()) for p in sorted((out / "_manifest").glob("*.json"))]
    assert len(manifests) == 6 and all(m["ok"] == 2 for m in manifests)
    stats = json.loads((out / "_stats.json").read_text())
    actors = stats["this_run"]["per_actor"]
    assert all(a["device"] == "cpu" for a in actors)  # logical GPUs: the actor falls back to the CPU
    nodes = {m["worker"]["node"] for m in manifests}
    assert len(nodes) == 2, f"shards ran on {nodes}; actors {actors}"  # one GPU actor per raylet
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] == 2 and saved["gpus_per_actor"] == 1

    verify = subprocess.run([str(BIN / "scaletok"), "verify", str(out), "--input", pattern],
                            capture_output=True, text=True, timeout=120, env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "6/6 shards verified" in verify.stdout


def test_gpu_clusters_get_one_actor_per_gpu_by_default(two_raylets):
    """Without --gpus-per-actor / --num-actors the pool is one 1-GPU actor per GPU of the cluster
    (here 2 logical GPUs on 2 raylets); --gpus-per-actor 0 gives CPU actors."""
    script = (
        "import json, ray\n"
        f"ray.init(address='{two_raylets}', logging_level='ERROR')\n"
        "from pipeline.runner.config import TokenizeConfig\n"
        "from pipeline.runner.job import pool_size\n"
        "base = dict(input=['x.tar'], output='out', tokenizer='var-vqvae', cpus_per_actor=1)\n"
        "print(json.dumps([pool_size(TokenizeConfig(**base), 10),\n"
        "                  pool_size(TokenizeConfig(**base, gpus_per_actor=0), 10),\n"
        "                  pool_size(TokenizeConfig(**base), 1)]))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stdout + run.stderr
    default, cpu_only, one_shard = json.loads(run.stdout.strip().splitlines()[-1])
    assert default == [2, 1.0]          # one actor per GPU, each pinned to one
    assert cpu_only == [2, 0.0]         # 2 CPUs / 1 CPU per actor
    assert one_shard == [1, 1.0]        # never more actors than shards
