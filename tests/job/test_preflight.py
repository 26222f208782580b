"""Refusals before any work: every input and the output are checked before Ray starts; a problem
is one line naming the URL and its role, exit code 2, and nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.job.conftest import TINY_MODULE

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "scaletok-preflight"


def tokenize(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "tokenize", "--tokenizer", "tiny-pool",
                          "--tokenizer-module", TINY_MODULE, "--no-progress", *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ, **(env or {}), RAY_ADDRESS=""))
    return run, time.perf_counter() - start


def assert_refused(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "Started a local Ray" not in run.stdout + run.stderr


def test_a_missing_local_input(corpus_dir, tmp_path):
    out = tmp_path / "out"
    missing = corpus_dir / "sample-000009.tar"
    run, seconds = tokenize("--input", str(corpus_dir / "sample-000000.tar"), "--input", str(missing),
                            "--output", str(out))
    assert_refused(run, "input", str(missing), "does not exist")
    assert not out.exists() and seconds < 60
    run, _ = tokenize("--input", str(corpus_dir), "--output", str(out))
    assert_refused(run, "input", "is a directory")


def test_missing_buckets_name_the_bucket_and_the_role(s3_server, corpus_dir, tmp_path):
    fs = s3_server["fs"]
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    fs.put(str(corpus_dir / "sample-000000.tar"), f"{BUCKET}/in/sample-000000.tar")
    endpoint = ["--storage-option", f"endpoint_url={s3_server['endpoint_url']}"]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    run, _ = tokenize("--input", "s3://no-such-bucket-in/x.tar", "--output", str(tmp_path / "o"), *endpoint, env=env)
    assert_refused(run, "input s3://no-such-bucket-in/x.tar", "bucket 'no-such-bucket-in' does not exist")
    run, _ = tokenize("--input", f"s3://{BUCKET}/in/sample-000000.tar", "--output", "s3://no-such-bucket-out/t",
                      *endpoint, env=env)
    assert_refused(run, "output s3://no-such-bucket-out/t", "does not exist")
    assert not fs.exists(f"{BUCKET}/in/_job.json") and not (tmp_path / "o").exists()


def test_an_output_that_cannot_be_written(corpus_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    run, _ = tokenize("--input", str(corpus_dir / "sample-000000.tar"), "--output", str(blocker / "out"))
    assert_refused(run, "output", str(blocker / "out"))
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("flags, words", [
    (["--num-actors", "0"], ["--num-actors must be >= 1"]),
    (["--batch-size", "lots"], ["--batch-size"]),
    (["--variants", "rotate"], ["unknown", "rotate"]),
])
def test_bad_flags_are_one_line_each(corpus_dir, tmp_path, flags, words):
    run, _ = tokenize("--input", str(corpus_dir / "sample-000000.tar"), "--output", str(tmp_path / "o"), *flags)
    assert_refused(run, *words)
    assert not (tmp_path / "o").exists()
