"""The commit protocol on a real S3-protocol server (moto on loopback): concurrent attempts with
other bytes, a store that ignores conditional creates (a proxy that drops If-None-Match) refused
by the probe, 412s, interrupted multipart uploads, and two different jobs claiming one output."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from pipeline.errors import UsageError
from pipeline.runner.build import plan_job
from pipeline.runner.job import run_tokenize
from pipeline.runner.output import OutputConflict, claim_output
from pipeline.sinks.resume import clean_attempts
from pipeline.sinks.manifest import (COMMITTED_OTHER, CREATED, build_manifest, commit_shard,
                                     read_all_manifests)
from pipeline.sinks.writer import OutputLayout
from tests.job.conftest import tiny_config
from tests.job.fault_proxy import FaultProxy, Rule

BUCKET = "scaletok-protocol"


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    if not s3_server["fs"].exists(BUCKET):
        s3_server["fs"].mkdir(BUCKET)
    return BUCKET


def s3_layout(s3_server, prefix: str, run_id: str = "run1", endpoint: str | None = None, **kw) -> OutputLayout:
    options = dict(s3_server["storage_options"])
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return OutputLayout(f"s3://{BUCKET}/{prefix}", options, run_id=run_id, **kw)


def manifest_for(layout: OutputLayout, shard: str, data: bytes) -> dict:
    return build_manifest(shard=shard, input_url="s3://in/x.tar", data=data, rows=1, status_counts={"ok": 1},
                          samples=1, fingerprint="f" * 32, tokenizer_fingerprint="t", histogram=None,
                          duration_s=0.0, attempt=0, attempt_id=layout.new_attempt_id(), worker={})


def test_concurrent_attempts_with_other_bytes_on_s3(s3_server, bucket):
    layout = s3_layout(s3_server, "race")
    results: dict[bytes, str] = {}
    barrier = threading.Barrier(4)

    def attempt(i: int) -> None:
        data = f"bytes of attempt {i}".encode()
        barrier.wait()
        results[data] = commit_shard(layout, "x", data, manifest_for(layout, "x", data))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winner = [d for d, outcome in results.items() if outcome == CREATED]
    assert len(winner) == 1 and list(results.values()).count(COMMITTED_OTHER) == 3
    published = layout.read_bytes(layout.data_path("x"))
    assert published == winner[0]
    assert hashlib.sha256(published).hexdigest() == read_all_manifests(layout)["x"]["sha256"]
    assert layout.list_dir(layout.attempt_dir, ".parquet") == []


def test_a_store_that_ignores_conditional_creates_is_refused(s3_server, bucket, corpus_pattern, ray_cluster):
    # A proxy that drops If-None-Match, as some S3-compatible stores ignore it.
    with FaultProxy(s3_server["endpoint_url"], [Rule("strip", header="If-None-Match")]) as proxy:
        endpoint = proxy.endpoint
        honest = s3_layout(s3_server, "probe")
        ignoring = s3_layout(s3_server, "probe", endpoint=endpoint)
        assert honest.probe_conditional_create() is True
        assert ignoring.probe_conditional_create() is False
        cfg = tiny_config([corpus_pattern], f"s3://{BUCKET}/ignoring", num_actors=1)
        cfg.storage_options = {**s3_server["storage_options"], "client_kwargs": {"endpoint_url": endpoint}}
        with pytest.raises(UsageError, match="ignores conditional creates.*--allow-unconditional-commit"):
            run_tokenize(cfg)
        assert not s3_server["fs"].exists(f"{BUCKET}/ignoring/_job.json")  # refused before writing
        cfg.allow_unconditional_commit = True  # the documented opt-in: check, then write
        assert run_tokenize(cfg) == 0
        assert len(s3_server["fs"].ls(f"{BUCKET}/ignoring/tokens")) == 3


def test_a_412_means_already_there(s3_server, bucket, monkeypatch):
    layout = s3_layout(s3_server, "precondition")

    def refuse(path, mode="rb", **kw):
        raise OSError("An error occurred (412) when calling the PutObject operation: Precondition Failed")

    monkeypatch.setattr(layout.fs, "open", refuse)
    assert layout.create_if_absent(layout.join("_manifest", "a.json"), b"x") is False

    def broken(path, mode="rb", **kw):
        raise OSError("connection reset by peer")

    monkeypatch.setattr(layout.fs, "open", broken)
    with pytest.raises(OSError, match="reset"):
        layout.create_if_absent(layout.join("_manifest", "a.json"), b"x")


def test_interrupted_multipart_uploads_of_settled_shards_are_aborted(s3_server, bucket):
    layout = s3_layout(s3_server, "multipart")
    assert commit_shard(layout, "done", b"data", manifest_for(layout, "done", b"data")) == CREATED
    layout.put(layout.join("_job.json"), json.dumps({"fingerprint": "f" * 32}).encode())
    fs = s3_server["fs"]
    for shard in ("done", "pending"):  # a crashed attempt of a committed shard, one of an uncommitted one
        fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key=f"multipart/_attempts/{shard}@old-1.parquet")
    assert clean_attempts(layout, "f" * 32) == 1
    left = fs.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix="multipart/_attempts/").get("Uploads", [])
    assert [u["Key"] for u in left] == ["multipart/_attempts/pending@old-1.parquet"]


def test_two_different_jobs_claim_an_empty_output_once(s3_server, bucket, corpus_pattern, tmp_path):
    specs = []
    for seed in (1, 2):
        tok = tmp_path / f"tok{seed}.json"
        tok.write_text(json.dumps({"seed": seed}))
        specs.append(plan_job(tiny_config([corpus_pattern], "unused", tokenizer_config=str(tok)))[0])
    assert specs[0].fingerprint != specs[1].fingerprint
    outcome: list[str] = []
    barrier = threading.Barrier(2)

    def claim(spec) -> None:
        layout = s3_layout(s3_server, "claimed")
        barrier.wait()
        try:
            claim_output(layout, spec, overwrite=False)
            outcome.append("owner")
        except OutputConflict:
            outcome.append("refused")

    threads = [threading.Thread(target=claim, args=(spec,)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome) == ["owner", "refused"]
    owner = json.loads(s3_server["fs"].cat_file(f"{BUCKET}/claimed/_job.json"))["fingerprint"]
    assert owner in {s.fingerprint for s in specs}
