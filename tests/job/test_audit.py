"""`scaletok verify OUT --reencode FRACTION`: the job's tokenizer rebuilt from _job.json re-encodes a
seeded sample of committed rows through the job's own path; per-scale agreement; the gate."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.runner.audit import reencode_audit, sampled
from tests.job.conftest import VAR_PATCH_NUMS

ROOT = Path(__file__).resolve().parents[2]


def test_sample_does_not_depend_on_order_or_count():
    keys = [f"k{i}" for i in range(4000)]
    picked = {k for k in keys if sampled(0, "s", k, 0.1)}
    assert 300 < len(picked) < 500
    assert picked == {k for k in reversed(keys) if sampled(0, "s", k, 0.1)}
    assert picked != {k for k in keys if sampled(1, "s", k, 0.1)}


def test_reencode_agrees_with_a_reproducible_job(var_reference):
    report = reencode_audit(str(var_reference), 1.0)
    assert report.rows == 12 and report.rows_identical == 12 and not report.missing
    assert [s.grid for s in report.scales] == [(p, p) for p in VAR_PATCH_NUMS]
    assert all(s.share == 1.0 and s.values == 12 * s.grid[0] * s.grid[1] for s in report.scales)


def tamper(out: Path, shard: str, scale_index: int) -> int:
    """Change every token of one scale in one row (and re-commit its checksum): what a GPU that
    rounds differently would have stored. Returns how many tokens changed."""
    path = out / "tokens" / f"{shard}.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    start = sum(p * p for p in VAR_PATCH_NUMS[:scale_index])
    n = VAR_PATCH_NUMS[scale_index] ** 2
    rows[0]["tokens"] = [t if not start <= i < start + n else (t + 1) % 256 for i, t in enumerate(rows[0]["tokens"])]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    manifest_path = out / "_manifest" / f"{shard}.json"
    manifest = json.loads(manifest_path.read_text())
    data = path.read_bytes()
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return n


def test_reencode_finds_what_another_machine_changed_and_gates(var_reference, tmp_path, corpus_pattern):
    out = tmp_path / "out"
    shutil.copytree(var_reference, out)
    changed = tamper(out, "sample-000001", 2)
    report = reencode_audit(str(out), 1.0)
    assert report.rows_identical == 11
    assert [s.share for s in report.scales][:2] == [1.0, 1.0] and report.scales[3].share == 1.0
    assert np.isclose(report.scales[2].share, 1 - changed / report.scales[2].values)
    cmd = [sys.executable, "-m", "pipeline.cli", "verify", str(out), "--reencode", "1", "--json"]
    ok = subprocess.run(cmd + ["--min-agreement", "0.5"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["reencode"]["rows_identical"] == 11
    gate = subprocess.run(cmd + ["--min-agreement", "0.99"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert gate.returncode == 1, gate.stderr
    # with --input too: the recount runs as well (clean: the checksum was re-committed)
    both = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(out), "--input", corpus_pattern,
                           "--reencode", "0.5"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert both.returncode == 0 and "clean" in both.stdout and "scale  3" in both.stdout, both.stdout + both.stderr
