"""The cluster workflow on one machine, exactly as the README gives it: infra/local/start-s3.sh and
start-cluster.sh (two raylets), the sample corpus on the S3 server, `ray job submit --working-dir .`
of the tokenize job and of a short training run, both SUCCEEDED, outputs checked, `scaletok report`
of the S3 output with the run, then the stop scripts. Ports and directories are this test's own, so nothing else on the machine is touched."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# The README's commands ("Try the workflow on one machine"), after the two start scripts. W is a
# scratch dir. test_readme_gives_exactly_these_commands keeps the two texts the same.
TOKENIZE = r"""
scaletok sample-corpus "$W/corpus" --num-shards 2 --samples-per-shard 8 --max-side 96
python -c "import fsspec; fsspec.filesystem('s3').put('$W/corpus', 's3://$S3_BUCKET/corpus', recursive=True)"
echo '{"ch": 32, "vocab_size": 256, "z_channels": 32}' > "$W/tiny-vqvae.json"
ray job submit --submission-id tokenize-1 --working-dir . -- python -m jobs.tokenize \
    --input "s3://$S3_BUCKET/corpus/sample-{000000..000001}.tar" --output "s3://$S3_BUCKET/tokens" \
    --tokenizer var-vqvae --tokenizer-config "$W/tiny-vqvae.json" --image-size 64 --patch-nums 1,2,3,4 \
    --no-progress
ray job status tokenize-1
"""
TRAIN = r"""
ray job submit --submission-id train-1 --working-dir . -- python -m jobs.train_var \
    --tokens "s3://$S3_BUCKET/tokens" --depth 2 --var-config embed_dim=64 --var-config num_heads=2 \
    --batch-size 8 --max-steps 4 --ckpt-every 4 --log-every 1 --storage-path "$W/runs" --name tiny
ray job status train-1
"""
REPORT = r"""
scaletok report "s3://$S3_BUCKET/tokens" --run "$W/runs/tiny" --samples 4
python -c "import fsspec; fsspec.filesystem('s3').get('s3://$S3_BUCKET/tokens/report.html', '$W/report.html')"
"""


def _free_port_block() -> int:
    """p such that p..p+4 and p+20000 are free: head, dashboard (+ its two agents' ports), S3 and
    the head's Ray client port (the scripts derive them this way)."""
    for start in range(31000 + os.getpid() % 4000, 45000, 7):
        try:
            for port in (*range(start, start + 5), start + 20000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start
    raise RuntimeError("no free block of ports")


def _bash(script: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=ROOT, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _sourced(path: Path) -> dict:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory):
    base = _free_port_block()
    head_port, dashboard_port, s3_port = base, base + 1, base + 4
    state = tmp_path_factory.mktemp("local-cluster")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SCALETOK_BIN": str(BIN),
           "RAY_HEAD_PORT": str(head_port), "RAY_DASHBOARD_PORT": str(dashboard_port), "S3_PORT": str(s3_port),
           "SCALETOK_LOCAL_DIR": str(state), "STOP_GRACE_S": "5"}
    # The README's order: the S3 server first, so the raylets (and the jobs) inherit its endpoint.
    started = _bash(f'infra/local/start-s3.sh && source "{state}/s3.env" && infra/local/start-cluster.sh',
                    env, timeout=240)
    try:
        assert started.returncode == 0, started.stdout + "".join(
            p.read_text()[-3000:] for p in state.glob("*.log"))
        env.update(_sourced(state / "s3.env"))
        env.update(_sourced(state / "cluster.env"))
        env["W"] = str(tmp_path_factory.mktemp("work"))
        yield env
    finally:
        groups = [int((state / p).read_text()) for p in ("head.pid", "worker.pid", "s3.pid") if (state / p).exists()]
        stopped = _bash("infra/local/stop-cluster.sh; infra/local/stop-s3.sh", env, timeout=120)
        leftovers = [g for g in groups if _group_alive(g)]
        shutil.rmtree(f"/tmp/stray-{head_port}", ignore_errors=True)  # Ray's session files (start-cluster.sh)
        assert stopped.returncode == 0 and not leftovers, stopped.stdout


def test_two_raylets_and_an_s3_bucket(local_stack):
    nodes = subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(logging_level='ERROR'); "
         "print([(n['NodeManagerAddress'], n['Resources']['CPU']) for n in ray.nodes() if n['Alive']])"],
        env=local_stack, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert nodes.stdout.strip().splitlines()[-1] == "[('127.0.0.2', 1.0), ('127.0.0.2', 1.0)]", nodes.stdout
    assert local_stack["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": local_stack["AWS_ENDPOINT_URL"]},
                           key="testing", secret="testing")
    assert fs.exists(local_stack["S3_BUCKET"])


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def job_status(env: dict, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(env["RAY_API_SERVER_ADDRESS"]).get_job_status(submission_id).value)


def _s3(env):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}, use_listings_cache=False,
                             key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def tokenized(local_stack):
    run = _bash(TOKENIZE, local_stack, timeout=400)
    assert run.returncode == 0, run.stdout[-6000:]
    return run.stdout


def test_tokenize_job_submitted_to_the_cluster_succeeds(local_stack, tokenized):
    assert job_status(local_stack, "tokenize-1") == "SUCCEEDED"
    assert "Job 'tokenize-1' succeeded" in plain(tokenized)  # what `ray job status` printed
    fs, bucket = _s3(local_stack), local_stack["S3_BUCKET"]
    data = sorted(fs.glob(f"{bucket}/tokens/tokens/*.parquet"))
    assert [p.rsplit("/", 1)[1] for p in data] == ["sample-000000.parquet", "sample-000001.parquet"]
    manifests = [json.loads(fs.cat(p)) for p in sorted(fs.glob(f"{bucket}/tokens/_manifest/*.json"))]
    assert [m["ok"] for m in manifests] == [8, 8]
    table = pq.read_table(data[0], filesystem=fs)
    assert table.num_rows == 8 and set(table.column("status").to_pylist()) == {"ok"}
    assert json.loads(table.schema.metadata[b"scaletok.tokenizer"]) == "var-vqvae"
    assert all(len(t) == 1 + 4 + 9 + 16 for t in table.column("tokens").to_pylist())


@pytest.fixture(scope="module")
def trained(local_stack, tokenized):
    run = _bash(TRAIN, local_stack, timeout=400)
    assert run.returncode == 0, run.stdout[-6000:]
    return run.stdout


def test_training_job_submitted_to_the_cluster_succeeds(local_stack, trained):
    assert job_status(local_stack, "train-1") == "SUCCEEDED"
    assert "Job 'train-1' succeeded" in plain(trained)
    run_dir = Path(local_stack["W"]) / "runs" / "tiny"
    assert (run_dir / "checkpoint_000000004" / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4


def test_report_of_the_s3_output_and_the_training_run(local_stack, trained):
    run = _bash(REPORT, local_stack, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:]
    page = (Path(local_stack["W"]) / "report.html").read_text()
    names = re.findall(r'data-file="([^"]+)"', page)
    assert names == ["throughput.png", "codebook.png", "failures.png", "reconstructions.png",
                     "training.png", "samples.png"], re.findall(r'class="missing">([^<]*)', page)
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.verify()
    assert _s3(local_stack).exists(f"{local_stack['S3_BUCKET']}/tokens/report/samples.png")


def test_readme_gives_exactly_these_commands():
    """The cluster workflow the README tells users to run is the one these tests run."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### Try the workflow on one machine", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    for name, script in (("TOKENIZE", TOKENIZE), ("TRAIN", TRAIN), ("REPORT", REPORT)):
        assert script.strip() in block, f"the README's local-cluster block no longer contains the {name} commands"
    for script in ("infra/local/start-s3.sh", "infra/local/start-cluster.sh", "infra/local/stop-cluster.sh",
                   "infra/local/stop-s3.sh"):
        assert script in block and (ROOT / script).is_file(), script
