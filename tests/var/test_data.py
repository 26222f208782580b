"""Token Parquet -> training batches: Arrow collate, status filter, metadata checks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.var.data import TokenDataError, check_tokenizer, collate_arrow, count_ok_rows, open_token_source

from conftest import SMALL_PATCH_NUMS, photo_crops, write_token_parquet


def test_collate_turns_list_column_into_BL(token_dir):
    source = open_token_source(str(token_dir))  # the job output dir: tokens/ is found inside
    assert source.patch_nums == SMALL_PATCH_NUMS and source.seq_len == 30 and len(source.files) == 2
    with source.filesystem.open(source.files[0], "rb") as f:
        table = pq.read_table(f)
    ok = table.filter(pa.compute.equal(table["status"], "ok"))
    batch = collate_arrow(ok.slice(3, 5), 30, null_label=1000)  # a sliced table: offsets must be honoured
    assert batch["tokens"].shape == (5, 30) and batch["tokens"].dtype == torch.int64
    expected = torch.tensor(ok["tokens"].to_pylist()[3:8])
    assert torch.equal(batch["tokens"], expected)
    assert batch["labels"].tolist() == ok["label"].to_pylist()[3:8]


def test_collate_null_labels_and_bad_lengths():
    tokens = pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.uint16()))
    table = pa.table({"tokens": tokens, "label": pa.array([None, 7], pa.int32())})
    out = collate_arrow(table, 3, null_label=1000)
    assert out["labels"].tolist() == [1000, 7]
    with pytest.raises(TokenDataError, match="exactly 4"):
        collate_arrow(table, 4, null_label=1000)


def test_metadata_is_checked_against_the_tokenizer(token_dir, small_tokenizer, fixture_tokenizer):
    source = open_token_source(str(token_dir / "tokens"))
    assert count_ok_rows(source) == 48  # 2 failed rows are not counted (Ray Data filters them too)
    check_tokenizer(source.metadata, small_tokenizer)  # the producer: passes
    with pytest.raises(TokenDataError, match="fingerprint"):
        check_tokenizer(source.metadata, fixture_tokenizer)  # same weights, other config (10 scales)
    with pytest.raises(TokenDataError, match="vocab_size 4096"):
        check_tokenizer({**source.metadata, "vocab_size": 4096}, small_tokenizer)
    with pytest.raises(TokenDataError, match="fingerprint"):
        check_tokenizer({**source.metadata, "fingerprint": "0" * 32}, small_tokenizer)


def test_training_reads_only_the_committed_set(tmp_path, token_dir, fixture_tokenizer):
    import json
    import shutil

    from pipeline.var.data import check_labels

    out = tmp_path / "jobs" / "a"
    shutil.copytree(token_dir, out)
    # data without a manifest (an interrupted commit), a manifest of another job fingerprint, and a
    # shard no longer in the job's input: all ignored, and said so
    (out / "tokens" / "interrupted.parquet").write_bytes((out / "tokens" / "shard-00000.parquet").read_bytes())
    images, labels = photo_crops(2, 256)
    write_token_parquet(tmp_path / "b" / "tokens", fixture_tokenizer, fixture_tokenizer.encode(images).flat(),
                        labels, "z")
    shutil.copy(tmp_path / "b" / "tokens" / "z.parquet", out / "tokens" / "z.parquet")
    foreign = json.loads((tmp_path / "b" / "_manifest" / "z.json").read_text())
    foreign["fingerprint"] = "0" * 32
    (out / "_manifest" / "z.json").write_text(json.dumps(foreign, indent=1, sort_keys=True))
    (out / "_inputs.json").write_text(json.dumps({"shards": ["shard-00000", "z", "interrupted"]}))
    source = open_token_source(str(out))
    assert [f.rsplit("/", 1)[-1] for f in source.files] == ["shard-00000.parquet"]
    assert "1 uncommitted" in source.ignored and "another job fingerprint" in source.ignored
    assert "no longer in the job's input" in source.ignored and source.manifests[0]["ok"] == 24
    # labels out of range are caught when training starts
    low, high = source.label_range()
    check_labels(source, high + 1)
    with pytest.raises(TokenDataError, match="outside the model's"):
        check_labels(source, high)
    # a parent holding two job outputs is refused; naming both works when they are one job's
    shutil.copytree(token_dir, tmp_path / "jobs" / "c")
    with pytest.raises(TokenDataError, match="holds 2 tokenize outputs"):
        open_token_source(str(tmp_path / "jobs"))
    both = open_token_source([str(tmp_path / "jobs" / "c"), str(token_dir)])
    assert len(both.files) == 4
    (tmp_path / "jobs" / "c" / "_job.json").write_text(json.dumps({"fingerprint": "1" * 32}))
    with pytest.raises(TokenDataError, match="different jobs"):
        open_token_source([str(tmp_path / "jobs" / "c"), str(token_dir)])
    with pytest.raises(TokenDataError, match="no token data"):
        open_token_source(str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    shutil.copy(tmp_path / "b" / "tokens" / "z.parquet", tmp_path / "plain" / "z.parquet")
    with pytest.raises(TokenDataError, match="not a tokenize output"):
        open_token_source(str(tmp_path / "plain"))
    assert len(open_token_source(str(tmp_path / "plain" / "z.parquet")).files) == 1  # one file, named


