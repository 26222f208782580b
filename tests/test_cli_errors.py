"""Every subcommand shows an error the same way: one stderr line `scaletok <cmd>: error: ...` and
exit 2 for bad usage or input, `... failed: ...` and exit 1 for a job that ran and failed;
`--debug` adds the traceback. Bad input is given on purpose to every subcommand, as a user would,
through the installed console script (subprocess: the real entry point, its real stderr)."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, run_job
from pipeline.errors import JobFailed, UsageError, checking_inputs, one_line

SCALETOK = Path(sys.executable).parent / "scaletok"
ROOT = Path(__file__).resolve().parents[1]


class _RunsCode:
    """A pickle that would run code when unpickled: what `--checkpoint evil.ckpt` holds."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "evil.ckpt").write_bytes(pickle.dumps(_RunsCode()))
    (d / "notes.png").write_text("not an image")
    (d / "a_file").write_text("x")
    (d / "empty_dir").mkdir()
    return {p.name: p for p in d.iterdir()} | {"dir": d}


def scaletok(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}  # no test here may get as far as Ray
    return subprocess.run([str(SCALETOK), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.strip()]


# (subcommand, arguments, what the one line must name). Paths are relative to the inputs dir.
BAD_INPUT = [
    ("encode", ["notes.png", "--out", "o", "--checkpoint", "evil.ckpt"], "evil.ckpt"),
    ("encode", ["notes.png", "--out", "o"], "no readable image among notes.png"),
    ("encode", ["notes.png", "--out", "o", "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
    ("tokenize", ["--input", "a_file", "--output", "o", "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
    ("tokenize", ["--input", "a_file", "--output", "o", "--tokenizer", "gq", "--num-actors", "0"],
     "--num-actors must be >= 1, got 0"),
    ("tokenize", ["--output", "o", "--tokenizer", "gq"], "--input is required"),
    ("verify", ["missing_out", "--input", "a_file"], "output missing_out does not exist"),
    ("verify", ["empty_dir", "--input", "a_file"], "empty_dir is not a tokenize output (no _job.json)"),
    ("report", ["missing_out"], "missing_out"),
    ("sample", ["--checkpoint", "missing_run"], "missing_run"),
    ("sample", [], "--checkpoint is required"),
    ("train", ["--tokens", "missing_tokens"], "missing_tokens"),
    ("train-tokenizer", ["--train-shards", "x.tar", "--family", "nope"], "family must be one of"),
    ("train-tokenizer", ["--train-shards", "missing-shard.tar", "--family", "gq"], "input"),
    ("sample-corpus", ["corpus", "--num-shards", "0"], "num_shards must be >= 1"),
    ("sample-corpus", ["a_file"], "a_file"),
    ("demo", ["--out", "demo", "--num-shards", "0"], "num_shards must be >= 1"),
    ("tokenize", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("train", ["--depth", "--max-steps"], "--depth: expected one argument"),
]


@pytest.mark.parametrize("command,args,names", BAD_INPUT, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(BAD_INPUT)])
def test_bad_input_is_one_line_and_exit_2(inputs, command, args, names):
    run = scaletok(command, *args, cwd=inputs["dir"])
    lines = error_lines(run)
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"scaletok {command}: error: "), lines[0]
    assert names in lines[0]
    assert "Traceback" not in run.stderr and "this must never run" not in run.stdout


def test_every_subcommand_is_covered_by_a_bad_input_case():
    assert {c for c, *_ in BAD_INPUT} == set(COMMANDS)


def test_debug_adds_the_traceback_and_keeps_the_exit_code(inputs):
    run = scaletok("encode", "notes.png", "--out", "o", "--checkpoint", "evil.ckpt", "--debug", cwd=inputs["dir"])
    assert run.returncode == 2
    assert "Traceback (most recent call last)" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("scaletok encode: error: cannot load evil.ckpt safely")
    before = scaletok("--debug", "tokenize", "--tokenizer", "nope", "--input", "x", "--output", "o", cwd=inputs["dir"])
    assert before.returncode == 2 and "Traceback" in before.stderr


def test_python_dash_m_entry_points_behave_the_same(inputs):
    run = subprocess.run([sys.executable, "-m", "jobs.encode", str(inputs["notes.png"]), "--out", "o",
                          "--tokenizer", "nope"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 2
    (line,) = error_lines(run)
    assert line.startswith("python -m jobs.encode: error: unknown tokenizer 'nope'; available: ")


def _run(raises: BaseException):
    def run(args):
        raise raises
    return run


@pytest.mark.parametrize("error,code,start", [
    (UsageError("--x must be >= 1"), 2, "prog: error: --x must be >= 1"),
    (JobFailed("tokenize job failed (exit 1)"), 1, "prog: failed: tokenize job failed (exit 1)"),
    (RuntimeError("worker died\n  detail"), 1, "prog: failed: RuntimeError: worker died detail (--debug"),
    (ZeroDivisionError(), 1, "prog: failed: ZeroDivisionError: ZeroDivisionError"),
])
def test_run_job_turns_each_kind_into_one_line_and_its_exit_code(capsys, error, code, start):
    assert run_job("prog", _run(error), argparse.Namespace(debug=False)) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(start), err


def test_input_errors_become_usage_errors_with_a_readable_message():
    with pytest.raises(UsageError, match=r"^unknown thing 'x'$"):
        with checking_inputs():
            raise KeyError("unknown thing 'x'")  # str(KeyError) would add quotes
    with pytest.raises(UsageError, match=r"^No such file or directory: /nope$"):
        with checking_inputs():
            open("/nope")
    with pytest.raises(RuntimeError):  # not an input error: the job failed
        with checking_inputs():
            raise RuntimeError("boom")
    assert len(one_line(ValueError("k " * 1000))) <= 600
