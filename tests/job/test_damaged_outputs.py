"""Rotten bits and lost files in a committed output, found by a rerun of the job: a flipped byte
(the same size: only a sha256 check sees it), a truncated file and a deleted one are encoded again
and published byte-identical under their manifests; a shard whose committed bytes are gone and whose
re-encoding differs is named as lost (exit 1), never silently replaced."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.runner.job import run_tokenize
from pipeline.runner.verify import verify_output
from pipeline.sinks.integrity import DamagedDataError
from pipeline.sinks.manifest import LOST, build_manifest, commit_shard
from pipeline.sinks.writer import OutputLayout
from pipeline.var.data import open_token_source
from tests.job.conftest import tiny_config


def snapshot(out) -> dict:
    return {"tokens": {p.name: p.read_bytes() for p in sorted((out / "tokens").glob("*.parquet"))},
            "manifests": {p.name: p.read_bytes() for p in sorted((out / "_manifest").glob("*.json"))}}


def flip_one_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def damage(out) -> None:
    tokens = out / "tokens"
    flip_one_byte(tokens / "sample-000000.parquet")
    whole = (tokens / "sample-000001.parquet").read_bytes()
    (tokens / "sample-000001.parquet").write_bytes(whole[: len(whole) // 2])
    (tokens / "sample-000002.parquet").unlink()


def test_a_rerun_redoes_damaged_and_missing_data_byte_identical(corpus_pattern, tmp_path, ray_cluster, capsys):
    out = tmp_path / "out"
    assert run_tokenize(tiny_config([corpus_pattern], out)) == 0
    clean = snapshot(out)
    damage(out)
    # Training's reader refuses the output instead of training on fewer (or altered) rows.
    with pytest.raises(DamagedDataError, match=r"1 committed shard\(s\) without their data file \(sample-000002\)"):
        open_token_source(str(out))
    report = verify_output(str(out), [corpus_pattern])
    assert [p.split(":")[0] for p in report.problems["partial"]] == ["sample-000000", "sample-000001"]
    assert [p.split(":")[0] for p in report.problems["missing"]] == ["sample-000002"]
    capsys.readouterr()
    assert run_tokenize(tiny_config([corpus_pattern], out)) == 0
    printed = capsys.readouterr().out
    assert "3 committed shards with a missing or damaged data file" in printed, printed
    assert "sample-000000: sha256 differs from its manifest's" in printed
    assert "sample-000002: data file missing" in printed and "3 to encode again" in printed
    assert "3 shards whose data file was missing or damaged encoded again, byte-identical" in printed
    assert "3/3 committed" in printed
    assert snapshot(out) == clean  # the manifests are the old ones: nothing was re-committed
    assert not list((out / "_attempts").iterdir())
    assert verify_output(str(out), [corpus_pattern]).clean
    # A rerun of a healthy output checks every file and does nothing.
    assert run_tokenize(tiny_config([corpus_pattern], out)) == 0
    assert "every committed data file checked by sha256" in capsys.readouterr().out


def test_a_size_check_misses_a_flipped_byte_that_the_hash_check_finds(corpus_pattern, tmp_path, ray_cluster, capsys):
    out = tmp_path / "out"
    assert run_tokenize(tiny_config([corpus_pattern], out)) == 0
    clean = snapshot(out)
    flip_one_byte(out / "tokens" / "sample-000001.parquet")
    capsys.readouterr()
    assert run_tokenize(tiny_config([corpus_pattern], out, check_data="size")) == 0
    assert "3 already committed, 0 to do" in capsys.readouterr().out
    assert snapshot(out) != clean
    assert run_tokenize(tiny_config([corpus_pattern], out, check_data="hash")) == 0
    assert "1 committed shard with a missing or damaged data file" in capsys.readouterr().out
    assert snapshot(out) == clean


def test_a_shard_whose_committed_bytes_are_gone_for_good_is_named_lost(corpus_pattern, tmp_path, ray_cluster,
                                                                       capsys):
    out = tmp_path / "out"
    jitter = tmp_path / "jitter.json"  # every encoding gives other bytes (as bf16 on another GPU may)
    jitter.write_text(json.dumps({"jitter": True}))
    assert run_tokenize(tiny_config([corpus_pattern], out, tokenizer_config=str(jitter))) == 0
    (out / "tokens" / "sample-000001.parquet").unlink()
    manifest_before = (out / "_manifest" / "sample-000001.json").read_bytes()
    capsys.readouterr()
    assert run_tokenize(tiny_config([corpus_pattern], out, tokenizer_config=str(jitter))) == 1
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if line.startswith("FAILED shard")]
    assert len(failed) == 1 and failed[0].startswith("FAILED shard sample-000001: lost: committed earlier"), printed
    assert "delete _manifest/sample-000001.json and tokens/sample-000001.parquet and rerun" in failed[0]
    assert (out / "_manifest" / "sample-000001.json").read_bytes() == manifest_before
    assert not (out / "tokens" / "sample-000001.parquet").exists()  # other bytes are never published
    assert "2/3 committed" in printed
    # The way out the message gives works.
    (out / "_manifest" / "sample-000001.json").unlink()
    assert run_tokenize(tiny_config([corpus_pattern], out, tokenizer_config=str(jitter))) == 0


def test_a_losing_attempt_restores_the_winners_bytes_or_reports_lost(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"), run_id="r1")
    layout.makedirs()

    def manifest(data: bytes) -> dict:
        return build_manifest(shard="x", input_url="/in/x.tar", data=data, rows=1, status_counts={"ok": 1},
                              samples=1, fingerprint="f" * 32, tokenizer_fingerprint="t", histogram=None,
                              duration_s=0.0, attempt=0, attempt_id=layout.new_attempt_id(), worker={})

    commit_shard(layout, "x", b"committed", manifest(b"committed"))
    shutil.copy(layout.data_path("x"), tmp_path / "keep")
    (tmp_path / "out" / "tokens" / "x.parquet").write_bytes(b"rotten!!!")     # same size, other bytes
    assert commit_shard(layout, "x", b"committed", manifest(b"committed")) == "committed_same"
    assert layout.read_bytes(layout.data_path("x")) == b"committed"
    (tmp_path / "out" / "tokens" / "x.parquet").unlink()
    assert commit_shard(layout, "x", b"different", manifest(b"different")) == LOST
    assert not (tmp_path / "out" / "tokens" / "x.parquet").exists()
    assert list((tmp_path / "out" / "_attempts").iterdir()) == []
