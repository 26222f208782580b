"""A full disk under the output, on a real (small) tmpfs: the pre-flight check refuses a full disk
before anything is written; a disk that fills up during the job fails its shards with the path
named, keeps the summary, leaves no zero-byte or temp file, and a rerun after freeing space gives
the clean run's bytes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runner.job import run_tokenize
from tests.job.conftest import TINY_MODULE, tiny_config

ROOT = Path(__file__).resolve().parents[2]
DISK_MB = 32


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs (mounting needs root or CAP_SYS_ADMIN; the test says so when it has neither)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full-disk test here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write one file until the disk is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError as e:
            assert e.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_preflight_refuses_a_full_disk(small_disk, corpus_pattern):
    fill(small_disk)
    out = small_disk / "out"
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "tokenize", "--tokenizer", "tiny-pool",
                          "--tokenizer-module", TINY_MODULE, "--no-progress", "--input", corpus_pattern,
                          "--output", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ, RAY_ADDRESS=""))
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "its disk is full" in lines[0] and str(out) in lines[0], run.stderr
    assert "Started a local Ray" not in run.stdout + run.stderr
    assert not (out / "_job.json").exists() and files_under(out) == []


def test_a_disk_that_fills_during_the_job(small_disk, corpus_pattern, tmp_path, ray_cluster, capsys):
    clean = tmp_path / "clean"
    assert run_tokenize(tiny_config([corpus_pattern], clean)) == 0
    out = small_disk / "out"
    filled: list[Path] = []
    cfg = tiny_config([corpus_pattern], out, max_shard_retries=1)
    capsys.readouterr()
    # The disk fills once the job has started: after pre-flight and the job records.
    assert run_tokenize(cfg, on_scheduler=lambda scheduler: filled.append(fill(small_disk))) == 1
    printed = capsys.readouterr().out
    assert "shards: 0/3 committed" in printed, printed  # the summary is kept
    failed = [line for line in printed.splitlines() if line.startswith("FAILED shard")]
    assert len(failed) == 3 and all("No space left on device" in line and str(out) in line for line in failed)
    assert "could not record this run" in printed
    leftovers = [p for p in files_under(out) if p.stat().st_size == 0 or "_tmp" in p.parts]
    assert leftovers == [], leftovers
    # Free the space, rerun: the clean run's bytes.
    filled[0].unlink()
    assert run_tokenize(tiny_config([corpus_pattern], out)) == 0
    for path in sorted((clean / "tokens").glob("*.parquet")):
        assert (out / "tokens" / path.name).read_bytes() == path.read_bytes(), path.name
