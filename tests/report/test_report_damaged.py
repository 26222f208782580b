"""`scaletok report` refuses a committed output whose token file was damaged after its commit:
exit 1 and one line naming the file (before: exit 0, a page over changed tokens, or a section
saying "not available"). The output is committed the way the tokenize job commits (manifest with
the bytes' size and sha256, then tokens/), without Ray: the report reads only what was written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as scaletok
from pipeline.sinks.integrity import WHAT_TO_DO

PATCH_NUMS = (1, 2, 3, 4)
VOCAB = 256
FINGERPRINT = "da3a" * 8


def _commit(out: Path, shard: str, rows: int, seed: int) -> None:
    from pipeline.sinks.manifest import build_manifest, commit_shard
    from pipeline.sinks.schema import TokenRow, build_table, token_schema
    from pipeline.sinks.writer import OutputLayout, parquet_bytes

    rng = np.random.default_rng(seed)
    length = sum(p * p for p in PATCH_NUMS)
    shapes = [v for p in PATCH_NUMS for v in (p, p)]
    table = build_table([TokenRow(key=f"{shard}-{i}", shard=shard, label=i % 3, height=64, width=64,
                                  height_padded=64, width_padded=64, scale_shapes=shapes,
                                  tokens=rng.integers(0, VOCAB, length).astype(np.uint16)) for i in range(rows)],
                        token_schema(VOCAB, metadata={"tokenizer": "var-vqvae", "patch_nums": list(PATCH_NUMS),
                                                      "vocab_size": VOCAB}))
    data = parquet_bytes(table)
    layout = OutputLayout(str(out))
    layout.makedirs()
    manifest = build_manifest(shard=shard, input_url=f"test://{shard}.tar", data=data, rows=rows,
                              status_counts={"ok": rows}, samples=rows, fingerprint=FINGERPRINT,
                              tokenizer_fingerprint="test", histogram=None, duration_s=0.5, attempt=0,
                              attempt_id=layout.new_attempt_id(), worker={})
    commit_shard(layout, shard, data, manifest)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-damaged")
    good = root / "good"
    good.mkdir()
    (good / "_job.json").write_text(json.dumps({"fingerprint": FINGERPRINT}))
    for s in range(2):
        _commit(good, f"part-{s}", rows=48, seed=s)
    out = {"good": good}
    for kind in ("flipped", "truncated"):
        out[kind] = Path(shutil.copytree(good, root / kind))
    path = out["flipped"] / "tokens" / "part-1.parquet"
    path.write_bytes(_flip_that_still_parses(path.read_bytes()))
    path = out["truncated"] / "tokens" / "part-1.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    return out


def _flip_that_still_parses(data: bytes) -> bytes:
    """One byte of the column data inverted, nearest the middle, where Parquet still reads the
    file with changed values."""
    original = pq.read_table(pa.BufferReader(data))
    data_end = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    for delta in range(data_end):
        for at in (data_end // 2 + delta, data_end // 2 - delta - 1):
            if 4 <= at < data_end:
                flipped = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
                try:
                    if not pq.read_table(pa.BufferReader(flipped)).equals(original):
                        return flipped
                except Exception:  # noqa: BLE001 -- most flips do not parse: the next offset
                    continue
    raise AssertionError("no single-byte flip of this file parses with changed values")


def _report(out: Path, capsys) -> tuple[int, str]:
    code = scaletok(["report", str(out), "--reconstructions", "0", "--samples", "0"])
    return code, capsys.readouterr().err


def test_an_intact_output_reports(outputs, capsys):
    code, err = _report(outputs["good"], capsys)
    assert code == 0, err
    assert (outputs["good"] / "report" / "codebook.png").exists()   # the checked bytes were read


def test_a_flipped_byte_fails_the_report_naming_the_file(outputs, capsys):
    path = outputs["flipped"] / "tokens" / "part-1.parquet"
    assert pq.read_table(path).num_rows == 48   # Parquet alone would not notice
    code, err = _report(outputs["flipped"], capsys)
    assert code == 1, err
    sha = json.loads((outputs["flipped"] / "_manifest" / "part-1.json").read_text())["sha256"]
    assert re.fullmatch(rf"scaletok report: failed: {re.escape(str(path))}: damaged: sha256 [0-9a-f]{{12}} differs "
                        rf"from its manifest's {sha[:12]}; {re.escape(WHAT_TO_DO)}\n", err), err
    assert not (outputs["flipped"] / "report.html").exists()


def test_a_truncated_file_fails_the_report_naming_the_file(outputs, capsys):
    path = outputs["truncated"] / "tokens" / "part-1.parquet"
    committed = json.loads((outputs["truncated"] / "_manifest" / "part-1.json").read_text())["bytes"]
    code, err = _report(outputs["truncated"], capsys)
    assert code == 1, err
    assert err == (f"scaletok report: failed: {path}: damaged: {committed - 100} bytes, its manifest "
                   f"(_manifest/part-1.json) says {committed}; {WHAT_TO_DO}\n")
    assert not (outputs["truncated"] / "report.html").exists()
