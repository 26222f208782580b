"""Faults of the output store, through a fault-injecting proxy in front of the tests' S3 server
(tests/job/fault_proxy.py): a response cut after the store applied the request, at each request of
the commit protocol one at a time; 503 SlowDown; random faults at 10 % and 30 % through the whole
job. Every run ends with exit 0 and the clean run's bytes, or an honest non-zero naming a shard;
a store that keeps failing gives up with one line naming the store, the operation and the rate."""

from __future__ import annotations

import hashlib
import json
import random
import time

import pytest

from pipeline.cli import main as cli_main
from pipeline.errors import one_line
from pipeline.runner.job import run_tokenize
from pipeline.runner.verify import verify_output
from pipeline.s3_store import RetryPolicy, StoreGaveUp
from pipeline.sinks.manifest import CREATED, build_manifest, commit_shard, read_all_manifests
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.sample_corpus import write_sample_corpus
from tests.job.conftest import TINY_MODULE, tiny_config
from tests.job.fault_proxy import FaultProxy, Rule, random_faults

BUCKET = "scaletok-faults"
SHARDS = 8

# A cut response at each request of the commit protocol and the job's records (one at a time).
# s3fs deletes with DeleteObjects (POST ?delete), whose keys are in the body.
CUTS = {
    "attempt PUT": dict(methods=("PUT",), path=r"/_attempts/"),
    "manifest create": dict(methods=("PUT",), path=r"/_manifest/", header="If-None-Match"),
    "publish PUT": dict(methods=("PUT",), path=r"/tokens/"),
    "attempt DELETE": dict(methods=("POST",), path=r"\?delete", body=r"_attempts/"),
    "job record": dict(methods=("PUT",), path=r"/_job\.json"),
    "inputs record": dict(methods=("PUT",), path=r"/_inputs\.json"),
    "run record": dict(methods=("PUT",), path=r"/_runs/"),
    "probe": dict(methods=("PUT",), path=r"/_probe/"),
}


def cut_once(step: str) -> Rule:
    return Rule("cut", times=1, **CUTS[step])


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    if not s3_server["fs"].exists(BUCKET):
        s3_server["fs"].mkdir(BUCKET)
    return BUCKET


@pytest.fixture(scope="module")
def s3_shards(s3_server, bucket, tmp_path_factory) -> str:
    """8 shards x 8 real photos on the S3 server (the operator's corpus size)."""
    local = tmp_path_factory.mktemp("fault-corpus")
    write_sample_corpus(local, num_shards=SHARDS, samples_per_shard=8, max_side=48)
    for path in sorted(local.glob("*.tar")):
        s3_server["fs"].put(str(path), f"{BUCKET}/corpus/{path.name}")
    return f"s3://{BUCKET}/corpus/*.tar"


def job(s3_shards: str, out: str, options: dict, **kw):
    cfg = tiny_config([s3_shards], f"s3://{BUCKET}/{out}", num_actors=2, **kw)
    cfg.storage_options = options
    return cfg


def output_state(fs, out: str) -> dict:
    """What must equal the clean run: every data file's bytes, each manifest's sha256, and no
    attempt file left."""
    root = f"{BUCKET}/{out}"
    fs.invalidate_cache()
    tokens = {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(f"{root}/tokens")}
    shas = {p.rsplit("/", 1)[-1]: json.loads(fs.cat_file(p))["sha256"] for p in fs.find(f"{root}/_manifest")}
    return {"tokens": tokens, "sha": shas, "attempts": fs.find(f"{root}/_attempts")}


@pytest.fixture(scope="module")
def clean_run(s3_server, s3_shards, ray_cluster) -> dict:
    assert run_tokenize(job(s3_shards, "clean", s3_server["storage_options"])) == 0
    state = output_state(s3_server["fs"], "clean")
    assert len(state["tokens"]) == SHARDS and len(state["sha"]) == SHARDS
    return state


# ---------------------------------------------------------------------------------- without Ray

def manifest_for(layout: OutputLayout, data: bytes) -> dict:
    return build_manifest(shard="x", input_url="s3://in/x.tar", data=data, rows=1, status_counts={"ok": 1},
                          samples=1, fingerprint="f" * 32, tokenizer_fingerprint="t", histogram=None,
                          duration_s=0.0, attempt=0, attempt_id=layout.new_attempt_id(), worker={})


@pytest.mark.parametrize("step", ["attempt PUT", "manifest create", "publish PUT", "attempt DELETE"])
def test_one_cut_response_in_the_commit_loses_nothing(s3_server, bucket, step):
    """The operator's case first: the manifest create applied, its response cut, the retry
    answered 412. The attempt must know the manifest is its own and publish."""
    with FaultProxy(s3_server["endpoint_url"], [cut_once(step)]) as proxy:
        prefix = f"cut-{step.replace(' ', '-').lower()}"
        layout = OutputLayout(f"s3://{BUCKET}/{prefix}", proxy.storage_options(s3_server["storage_options"]),
                              run_id="r1")
        data = b"the shard's bytes " + step.encode()
        manifest = manifest_for(layout, data)
        assert commit_shard(layout, "x", data, manifest) == CREATED
        assert len(proxy.faults("cut")) == 1, proxy.log
    fs = s3_server["fs"]
    fs.invalidate_cache()
    assert fs.cat_file(f"{BUCKET}/{prefix}/tokens/x.parquet") == data
    assert read_all_manifests(layout)["x"]["attempt_id"] == manifest["attempt_id"]
    assert hashlib.sha256(data).hexdigest() == read_all_manifests(layout)["x"]["sha256"]


def test_a_cut_probe_response_does_not_blame_a_healthy_store(s3_server, bucket):
    with FaultProxy(s3_server["endpoint_url"], [cut_once("probe")]) as proxy:
        layout = OutputLayout(f"s3://{BUCKET}/probe-cut", proxy.storage_options(s3_server["storage_options"]))
        assert layout.probe_conditional_create() is True
        assert len(proxy.faults("cut")) == 1


def test_the_retry_policy_is_jittered_and_bounded():
    policy, rng = RetryPolicy(), random.Random(0)
    assert policy.attempts == 12 and policy.bound_s() == pytest.approx(31.3)
    for attempt in range(1, policy.attempts):
        cap = min(policy.cap_s, policy.base_s * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > 0.8 * cap and min(delays) < 0.2 * cap


def test_a_store_that_keeps_failing_gives_up_with_one_line(s3_server, bucket):
    options = {**s3_server["storage_options"], "retry_attempts": 3}
    with FaultProxy(s3_server["endpoint_url"], [Rule("slowdown", methods=("PUT",), path="/stuck/")]) as proxy:
        layout = OutputLayout(f"s3://{BUCKET}/stuck", proxy.storage_options(options))
        started = time.perf_counter()
        with pytest.raises(OSError) as raised:
            layout.put(layout.join("x.json"), b"{}")
        waited = time.perf_counter() - started
    line = one_line(raised.value)
    assert line.startswith(f"S3 store {proxy.endpoint}: PutObject {BUCKET}/stuck/x.json gave up after 3 attempts")
    assert "(503 SlowDown)" in line and "% of the last" in line and "\n" not in line
    # 3 attempts with jittered waits <= 0.1 + 0.2 s, and no second round by s3fs (StoreGaveUp).
    assert isinstance(raised.value, StoreGaveUp)
    assert len(proxy.faults("slowdown")) == 3 and waited < 5


# ---------------------------------------------------------------------------------- the job

@pytest.mark.parametrize("step", list(CUTS))
def test_the_job_survives_a_cut_response_at_each_step(s3_server, s3_shards, clean_run, step):
    out = f"job-cut-{step.replace(' ', '-')}"
    with FaultProxy(s3_server["endpoint_url"], [cut_once(step)]) as proxy:
        assert run_tokenize(job(s3_shards, out, proxy.storage_options(s3_server["storage_options"]))) == 0
        assert len(proxy.faults("cut")) == 1, f"the {step} fault did not happen"
    assert output_state(s3_server["fs"], out) == clean_run
    report = verify_output(f"s3://{BUCKET}/{out}", [s3_shards], s3_server["storage_options"])
    assert report.clean, report.format()


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_the_job_under_random_faults_gives_the_clean_bytes(s3_server, s3_shards, clean_run, rate, capsys):
    out = f"job-random-{int(rate * 100)}"
    with FaultProxy(s3_server["endpoint_url"], random_faults(rate), seed=int(rate * 100)) as proxy:
        rc = run_tokenize(job(s3_shards, out, proxy.storage_options(s3_server["storage_options"])))
        faults, requests = len(proxy.faults()), len(proxy.log)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"{SHARDS}/{SHARDS} committed" in printed
    assert faults > rate * requests / 3, (faults, requests)  # the faults did happen
    assert output_state(s3_server["fs"], out) == clean_run


def test_a_job_whose_store_keeps_throttling_fails_naming_it(s3_server, s3_shards, ray_cluster, capsys):
    with FaultProxy(s3_server["endpoint_url"], [Rule("slowdown", methods=("PUT",), path="/job-stuck/_attempts/")]) \
            as proxy:
        endpoint = proxy.endpoint
        args = ["tokenize", "--input", s3_shards.replace("*", "sample-000000"), "--output",
                f"s3://{BUCKET}/job-stuck", "--tokenizer", "tiny-pool", "--tokenizer-module", TINY_MODULE,
                "--num-actors", "1", "--max-shard-retries", "0", "--no-progress",
                "--storage-option", "key=testing", "--storage-option", "secret=testing",
                "--storage-option", f"endpoint_url={endpoint}", "--storage-option", "retry_attempts=2"]
        assert cli_main(args) == 1
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if line.startswith("FAILED shard sample-000000")]
    assert len(failed) == 1, printed
    assert f"S3 store {endpoint}: PutObject {BUCKET}/job-stuck/_attempts/sample-000000@" in failed[0]
    assert "gave up after 2 attempts" in failed[0] and "(503 SlowDown)" in failed[0]
