"""A committed token file damaged after its commit stops training at once, with one line naming it.

Copies of a real tokenize output (tests/var/conftest.py: job_token_dir), damaged two ways:
- one byte of a token file flipped where Parquet still reads the file, with changed values (the
  dangerous case: ~7 % of single-byte flips; before the check, training used the altered tokens
  and exited 0). A Ray Train worker meets it when it reads its share: the run fails without a
  restart, and `scaletok train` prints `failed: <file>: damaged: sha256 ...` and exits 1;
- a token file cut short: the driver's size check refuses it before Ray Train starts.
One TorchTrainer run in all (~30 s of fixed Ray overhead); the rest needs no Ray.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as scaletok
from pipeline.sinks.arrow_io import read_table
from pipeline.sinks.integrity import WHAT_TO_DO, DamagedDataError, check_data, check_size
from pipeline.training.run_config import checkpoint_dirs, final_error_of, final_errors_callback
from pipeline.var.data import TokenDataError

SHARD = "sample-000000"   # the first of job_token_dir's shards (the sample corpus's tar names)


def flip_that_still_parses(data: bytes) -> bytes:
    """`data` with one byte of its column data inverted, at the offset nearest the middle where
    Parquet still reads the whole file and its values changed."""
    original = pq.read_table(pa.BufferReader(data))
    data_end = len(data) - 8 - int.from_bytes(data[-8:-4], "little")  # the footer starts here
    middle = data_end // 2
    for delta in range(data_end):
        for at in (middle + delta, middle - delta - 1):
            if not 4 <= at < data_end:
                continue
            flipped = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
            try:
                table = pq.read_table(pa.BufferReader(flipped))
            except Exception:  # noqa: BLE001 -- most flips do not parse: try the next offset
                continue
            if not table.equals(original):
                return flipped
    raise AssertionError("no single-byte flip of this file parses with changed values")


@pytest.fixture(scope="module")
def outputs(job_token_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damaged")
    assert (job_token_dir / "tokens" / f"{SHARD}.parquet").exists(), sorted(glob.glob(f"{job_token_dir}/tokens/*"))
    out = {"good": job_token_dir}
    for kind in ("flipped", "truncated"):
        out[kind] = Path(shutil.copytree(job_token_dir, root / kind))
    path = out["flipped"] / "tokens" / f"{SHARD}.parquet"
    path.write_bytes(flip_that_still_parses(path.read_bytes()))
    path = out["truncated"] / "tokens" / f"{SHARD}.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest" / f"{SHARD}.json").read_text())


# ------------------------------------------------------------------------------ the check itself
def test_check_data_says_what_is_damaged_and_what_to_do_in_one_line():
    data = b"committed bytes"
    record = {"shard": "s-1", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    check_data(data, record, "out/tokens/s-1.parquet")   # the committed bytes pass
    with pytest.raises(DamagedDataError) as cut:
        check_data(data[:5], record, "out/tokens/s-1.parquet")
    assert str(cut.value) == (f"out/tokens/s-1.parquet: damaged: 5 bytes, its manifest (_manifest/s-1.json) says "
                              f"{len(data)}; {WHAT_TO_DO}")
    changed = b"committed bytez"
    with pytest.raises(DamagedDataError) as flipped:
        check_data(changed, record, "out/tokens/s-1.parquet")
    digest = hashlib.sha256(changed).hexdigest()
    assert str(flipped.value) == (f"out/tokens/s-1.parquet: damaged: sha256 {digest[:12]} differs from its "
                                  f"manifest's {record['sha256'][:12]}; {WHAT_TO_DO}")
    assert "\n" not in str(flipped.value) and "scaletok verify" in str(flipped.value)
    with pytest.raises(DamagedDataError, match="says 15"):
        check_size(3, record, "out/tokens/s-1.parquet")
    # a file named directly (no manifest) and a record without sha256 are read as they are
    check_data(changed, {}, "x.parquet")
    check_data(changed, {"bytes": 1}, "x.parquet")
    check_size(1, {}, "x.parquet")


def test_read_table_refuses_a_flip_that_parquet_reads(outputs):
    fs = fsspec.filesystem("file")
    path = str(outputs["flipped"] / "tokens" / f"{SHARD}.parquet")
    assert pq.read_table(path).num_rows > 0   # the dangerous case: it parses
    with pytest.raises(DamagedDataError, match=rf"{re.escape(path)}: damaged: sha256 [0-9a-f]{{12}} differs"):
        read_table(fs, path, columns=["status"], manifest=manifest(outputs["flipped"]))
    good = str(outputs["good"] / "tokens" / f"{SHARD}.parquet")
    assert read_table(fs, good, manifest=manifest(outputs["good"])).equals(pq.read_table(good))


def test_a_final_worker_error_is_raised_by_the_controller_callback_and_found_by_the_driver():
    """Ray Train's own wrappers (Ray 2.60): a worker's exception reaches the controller wrapped
    with its traceback text; the callback raises it as a ControllerError (not retried), which
    fit() gets back and unwraps."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    kinds = (DamagedDataError, TokenDataError)
    damaged = DamagedDataError("out/tokens/s.parquet: damaged: ...")
    wrapped = {0: UserExceptionWithTraceback(RuntimeError("other"), "tb"), 1: UserExceptionWithTraceback(damaged, "tb")}
    callback = final_errors_callback(kinds)
    with pytest.raises(ControllerError) as raised:
        callback.after_exception(None, wrapped)
    assert raised.value.controller_failure is damaged
    callback.after_exception(None, {0: UserExceptionWithTraceback(RuntimeError("worker died"), "tb")})  # retried
    assert final_error_of(ControllerError(damaged), kinds) is damaged
    assert final_error_of(WorkerGroupError("tb", wrapped), kinds) is damaged
    assert final_error_of(WorkerGroupError("tb", {0: RuntimeError("x")}), kinds) is None


# ------------------------------------------------------------------------------ training
def _train(tokens: Path, runs: Path, tokenizer_checkpoint: str, name: str) -> list[str]:
    return ["train", "--tokens", str(tokens), "--tokenizer-checkpoint", tokenizer_checkpoint, "--depth", "2",
            "--var-config", "embed_dim=64", "--var-config", "num_heads=2", "--batch-size", "8",
            "--num-workers", "2", "--cpus-per-worker", "0.5", "--max-steps", "4", "--log-every", "1",
            "--storage-path", str(runs), "--name", name]


def _failure_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("scaletok train:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_truncated_file_stops_training_on_the_driver_before_ray_train(outputs, tmp_path, capsys,
                                                                         small_tokenizer_spec):
    started = time.monotonic()
    code = scaletok(_train(outputs["truncated"], tmp_path / "runs", small_tokenizer_spec["checkpoint"], "cut"))
    err = capsys.readouterr().err
    assert code == 1, err
    path = outputs["truncated"] / "tokens" / f"{SHARD}.parquet"
    size, committed = path.stat().st_size, manifest(outputs["truncated"])["bytes"]
    assert _failure_line(err) == (f"scaletok train: failed: {path}: damaged: {size} bytes, its manifest "
                                  f"(_manifest/{SHARD}.json) says {committed}; {WHAT_TO_DO}")
    assert not (tmp_path / "runs").exists()   # refused before the run (or Ray Train) started
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_a_flipped_byte_fails_the_training_run_at_once_without_restarts(fresh_ray, outputs, tmp_path, capsys,
                                                                       small_tokenizer_spec):
    """The flip is found by the Ray Train worker whose share holds the file (the driver reads no
    token file whole here: the manifests' counts fix the plan)."""
    started = time.monotonic()
    code = scaletok(_train(outputs["flipped"], tmp_path / "runs", small_tokenizer_spec["checkpoint"], "flip"))
    elapsed = time.monotonic() - started
    out = capsys.readouterr()
    assert code == 1, out.err
    path = outputs["flipped"] / "tokens" / f"{SHARD}.parquet"
    line = _failure_line(out.err)
    assert re.fullmatch(rf"scaletok train: failed: {re.escape(str(path))}: damaged: sha256 [0-9a-f]{{12}} differs "
                        rf"from its manifest's {manifest(outputs['flipped'])['sha256'][:12]}; "
                        rf"{re.escape(WHAT_TO_DO)}", line), line
    # not one step on the altered tokens: the run would have checkpointed its last step (4)
    assert checkpoint_dirs(fsspec.filesystem("file"), str(tmp_path / "runs" / "flip")) == []
    # One attempt: the controller's failure policy raised at once (a retry would log "RETRY" and
    # start the worker group again, ~10 s each here).
    decisions = _failure_decisions(fresh_ray)
    assert decisions and all("RAISE" in d for d in decisions), decisions
    assert elapsed < 120, elapsed


def _failure_decisions(ray) -> list[str]:
    """The Ray Train controllers' failure-policy decisions logged in this Ray session."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = []
    for log in logs.rglob("*"):
        if log.is_file() and log.suffix in (".log", ".out", ".err"):
            found += re.findall(r"\[FailurePolicy\] \w+", log.read_text(errors="replace"))
    return found
