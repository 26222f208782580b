"""A Ray left running on the machine by `ray start --head` (someone else's, or an old one) is not
joined by a job run without --address/RAY_ADDRESS: tokenize and train each start their own local
Ray, the train job's log has each line once and no traceback from Ray Train's helper actors.

The foreign head lives in its own RAY_TMPDIR, which this test's jobs share: that is where
`ray start` records itself (ray_current_cluster) and where a plain `ray.init()` looks, so the
hazard is real here (a control run shows a plain ray.init() joining it) without touching any
other Ray on the machine. Only the head started here is stopped, by its own process."""

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

from pipeline.sources.sample_corpus import write_sample_corpus

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
NODE_IP = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


def python(script: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def foreign_head(tmp_path_factory):
    """(address, env): a `ray start --head` and the environment in which it is the machine's Ray."""
    tmpdir = tempfile.mkdtemp(prefix="frgn", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=tmpdir, RAY_USAGE_STATS_ENABLED="0")
    port = free_port()
    log = tmp_path_factory.mktemp("foreign") / "head.log"
    head = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--head", "--port", str(port),
                             "--node-ip-address", NODE_IP, "--num-cpus", "1", "--include-dashboard", "false",
                             "--disable-usage-stats"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"{NODE_IP}:{port}"
    try:
        deadline = time.time() + 120
        while not (Path(tmpdir) / "ray" / "ray_current_cluster").exists():
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start --head did not come up: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield address, env
    finally:
        head.terminate()  # --block: stopping this process stops exactly this head's processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(tmpdir, ignore_errors=True)


def drivers_seen_by(address: str, env: dict[str, str]) -> list[str]:
    """The entrypoints of every driver that ever joined the cluster at `address`."""
    script = ("import json, ray\n"
              f"ray.init(address={address!r}, logging_level='ERROR')\n"
              "from ray._private.state import jobs\n"
              "print(json.dumps([j.get('Entrypoint', '') for j in jobs()]))\n")
    run = python(script, env)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_setup_reproduces_the_hazard(foreign_head):
    address, env = foreign_head
    run = python("import ray\nray.init(logging_level='ERROR')\nprint(ray.get_runtime_context().gcs_address)\n", env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == address  # plain ray.init() joins the foreign head


def test_jobs_without_an_address_start_their_own_ray(foreign_head, tmp_path):
    address, env = foreign_head
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, num_shards=2, samples_per_shard=4, max_side=64)
    tokens = tmp_path / "tokens"
    tokenize = subprocess.run(
        [str(BIN / "scaletok"), "tokenize", "--input", f"{corpus}/*.tar", "--output", str(tokens),
         "--tokenizer", "default", "--num-actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "4",
         "--no-progress"], capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert tokenize.returncode == 0, tokenize.stdout + tokenize.stderr
    assert "2/2 committed" in tokenize.stdout

    train = subprocess.run(
        [str(BIN / "scaletok"), "train", "--tokens", str(tokens), "--depth", "2", "--var-config", "embed_dim=32",
         "--var-config", "num_heads=2", "--batch-size", "4", "--max-steps", "2", "--log-every", "1",
         "--ckpt-every", "2", "--storage-path", str(tmp_path / "runs"), "--name", "t"],
        capture_output=True, text=True, timeout=500, env=env, cwd=tmp_path)
    log = train.stdout + train.stderr
    assert train.returncode == 0, log
    for step in ("[train] step 1/2", "[train] step 2/2"):
        assert log.count(step) == 1, log  # each line once
    assert "Traceback" not in log and "multiple active Ray instances" not in log, log

    entrypoints = drivers_seen_by(address, env)
    assert entrypoints and not any("scaletok" in e for e in entrypoints), entrypoints
