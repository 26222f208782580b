"""Sources and sinks without Ray: shard listing, tar streaming on damaged tars, decode statuses,
the Parquet schema and its determinism, verify's problem kinds (the commit protocol:
test_commit_protocol.py)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sinks.schema import TokenRow, build_table, decode_metadata, token_schema
from pipeline.sinks.writer import parquet_bytes
from pipeline.sources.decode import decode_sample
from pipeline.sources.listing import expand_shards, shard_name
from pipeline.sources.tar_stream import UnreadableShard, count_samples, iter_samples, split_key
from tests.job.corpus import EXPECTED, good_members, write_tar


def test_listing_patterns(tmp_path):
    for i in range(4):
        write_tar(tmp_path / f"train-{i:06d}.tar", good_members("k", 1))
    braced = expand_shards(str(tmp_path / "train-{000000..000002}.tar"))
    assert [s.name for s in braced] == ["train-000000", "train-000001", "train-000002"]
    globbed = expand_shards([str(tmp_path / "train-*.tar")])
    assert [s.name for s in globbed] == [f"train-{i:06d}" for i in range(4)]
    joined = expand_shards(f"file://{tmp_path}/train-000003.tar::{tmp_path}/train-00000[01].tar")
    assert [s.name for s in joined] == ["train-000003", "train-000000", "train-000001"]
    assert all(os.path.isabs(s.url) for s in joined)
    again = expand_shards([str(tmp_path / "train-000000.tar"), str(tmp_path / "train-00000[0].tar")])
    assert len(again) == 1  # listed once
    (tmp_path / "other").mkdir()
    write_tar(tmp_path / "other" / "train-000000.tar", good_members("k", 1))
    with pytest.raises(ValueError, match="share the name"):
        expand_shards([str(tmp_path / "train-000000.tar"), str(tmp_path / "other" / "train-000000.tar")])
    with pytest.raises(ValueError, match="matched no files"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    assert shard_name("s3://b/x/train-000001.tar.gz") == "train-000001"


def test_split_key_follows_webdataset():
    assert split_key("a/b.c/n01440764_1.JPEG.jpg") == ("a/b.c/n01440764_1", "jpeg.jpg")
    assert split_key("000001.seg.png") == ("000001", "seg.png")
    assert split_key("plain") == (None, None)
    assert split_key("dir.v2/.hidden") == (None, None)
    assert split_key("__meta__") == (None, None)


def test_bad_inputs_at_the_reader(bad_shards):
    for name, expected in EXPECTED.items():
        got = [(d.key, d.status) for d in map(decode_sample, iter_samples(bad_shards[name]))]
        if name == "bad-corrupt":
            assert got[0] == expected[0] and got[1][1] == "corrupt_tar"
        else:
            assert got == expected, name
        assert count_samples(bad_shards[name])[0] == len(expected)  # verify's recount agrees
    with pytest.raises(UnreadableShard, match="not a readable tar"):
        list(iter_samples(bad_shards["bad-notatar"]))
    with pytest.raises(UnreadableShard, match="cannot open"):
        list(iter_samples(bad_shards["bad-notatar"] + ".missing"))


def test_truncation_at_member_boundary_and_gzip(tmp_path):
    data = open(write_tar(tmp_path / "ok.tar", good_members("a", 2)), "rb").read()
    import tarfile

    with tarfile.open(tmp_path / "ok.tar") as tar:
        second = tar.getmembers()[3]  # a0001.jpg header
    (tmp_path / "cut.tar").write_bytes(data[: second.offset])  # ends exactly between samples
    got = [(s.key, s.status) for s in iter_samples(str(tmp_path / "cut.tar"))]
    assert got[0] == ("a0000", None) and got[-1][1] == "truncated_tar"
    import gzip

    packed = gzip.compress(data)
    (tmp_path / "z.tar.gz").write_bytes(packed[: len(packed) * 3 // 4])  # cut inside the last sample
    got = [(s.key, s.status) for s in iter_samples(str(tmp_path / "z.tar.gz"))]
    assert got[-1][1] == "truncated_tar" and ("a0000", None) in got


def test_member_size_limit(tmp_path):
    path = write_tar(tmp_path / "big.tar", good_members("a", 1))
    [sample] = list(iter_samples(path, max_member_bytes=100))
    assert decode_sample(sample).status == "too_large"


def _rows(n: int, vocab: int) -> list[TokenRow]:
    rng = np.random.default_rng(0)
    rows = [TokenRow(key=f"k{i}", shard="s", label=i, height=10, width=12, height_padded=16, width_padded=16,
                     tokens=rng.integers(0, vocab, 30), scale_shapes=[1, 1, 2, 2, 3, 3, 4, 4]) for i in range(n)]
    rows.append(TokenRow(key="bad", shard="s", status="decode_error", error="boom"))
    return rows


def test_schema_types_and_deterministic_bytes():
    schema = token_schema(256, metadata={"tokenizer": "t", "patch_nums": [1, 2]})
    a = parquet_bytes(build_table(_rows(50, 256), schema), row_group_rows=16)
    b = parquet_bytes(build_table(_rows(50, 256), schema), row_group_rows=16)
    assert a == b
    pf = pq.ParquetFile(io.BytesIO(a))
    assert pf.metadata.num_row_groups == 4
    table = pf.read()
    assert str(table.schema.field("tokens").type) == "list<element: uint16>"
    assert decode_metadata(table.schema) == {"tokenizer": "t", "patch_nums": [1, 2]}
    last = table.slice(50).to_pylist()[0]
    assert last["tokens"] == [] and last["scale_shapes"] == [] and last["label"] is None
    big = build_table(_rows(2, 100_000), token_schema(100_000))
    assert big.schema.field("tokens").type.value_type == pa.int32()


def test_arrow_io_reads_what_pyarrow_reads_from_arrow_memory(tmp_path):
    # arrow_io exists to keep reads off Arrow's IO pool (an abort at interpreter exit, see its doc);
    # it must give exactly what pq.read_table gives, whole and by column, schema metadata included.
    import fsspec

    from pipeline.sinks.arrow_io import open_parquet, read_schema, read_table

    schema = token_schema(256, metadata={"tokenizer": "t", "patch_nums": [1, 2]})
    data = parquet_bytes(build_table(_rows(40, 256), schema), row_group_rows=16)
    path = tmp_path / "t.parquet"
    path.write_bytes(data)
    fs = fsspec.filesystem("file")
    assert read_table(fs, str(path)).equals(pq.read_table(path))
    assert read_table(fs, str(path), columns=["status"]).equals(pq.read_table(path, columns=["status"]))
    pf = open_parquet(fs, str(path))
    assert decode_metadata(pf.schema_arrow) == {"tokenizer": "t", "patch_nums": [1, 2]}
    assert pf.metadata.num_row_groups == 3
    # The schema from the footer alone: the same schema and metadata as pyarrow's own reader.
    assert read_schema(fs, str(path)).equals(pq.read_schema(path), check_metadata=True)
    for bad in (b"", b"PAR1", data[:-1], data[:-8] + (10**9).to_bytes(4, "little") + b"PAR1"):
        (tmp_path / "bad.parquet").write_bytes(bad)
        with pytest.raises(pa.ArrowInvalid):
            read_schema(fs, str(tmp_path / "bad.parquet"))


def test_verify_reports_each_problem_kind(ray_cluster, corpus_pattern, tmp_path):
    from pipeline.runner.job import run_tokenize
    from pipeline.runner.verify import verify_output
    from tests.job.conftest import tiny_config

    out = tmp_path / "out"
    assert run_tokenize(tiny_config([corpus_pattern], out, num_actors=1)) == 0
    assert verify_output(str(out), [corpus_pattern]).clean
    (out / "tokens" / "stray.parquet").write_bytes((out / "tokens" / "sample-000000.parquet").read_bytes())
    data = out / "tokens" / "sample-000001.parquet"
    data.write_bytes(data.read_bytes()[:-100] + b"\0" * 100)
    manifest = json.loads((out / "_manifest" / "sample-000002.json").read_text())
    manifest["fingerprint"] = "0" * 32
    (out / "_manifest" / "sample-000002.json").write_text(json.dumps(manifest))
    report = verify_output(str(out), [corpus_pattern])
    assert not report.clean
    assert report.problems["orphan"] == ["tokens/stray.parquet belongs to no input shard"]
    assert report.problems["partial"] == ["sample-000001: data file checksum differs from its manifest"]
    assert report.problems["stale"] and report.ok == ["sample-000000"]

    # duplicate: a committed file (manifest updated to match) with one key's ok row twice
    import hashlib

    import pyarrow.parquet as pq

    first = out / "tokens" / "sample-000000.parquet"
    table = pq.read_table(first)
    assert table.num_rows >= 2
    doubled = table.take(list(range(table.num_rows - 1)) + [0])
    pq.write_table(doubled, first, compression="zstd")
    manifest_path = out / "_manifest" / "sample-000000.json"
    manifest = json.loads(manifest_path.read_text())
    raw = first.read_bytes()
    manifest.update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))
    manifest_path.write_text(json.dumps(manifest))
    report = verify_output(str(out), [corpus_pattern], check_tars=False)
    key = table.column("key")[0].as_py()
    assert report.problems["duplicate"] == [f"sample-000000: keys with more than one ok row: [{key!r}]"]
    assert report.ok == []
