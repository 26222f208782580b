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


def test_files_from_two_tokenizers_are_refused(tmp_path, token_dir, fixture_tokenizer):
    import shutil

    shutil.copytree(token_dir / "tokens", tmp_path / "tokens")
    images, labels = photo_crops(2, 256)
    write_token_parquet(tmp_path / "tokens", fixture_tokenizer, fixture_tokenizer.encode(images).flat(), labels, "z")
    with pytest.raises(TokenDataError, match="disagree on fingerprint"):
        open_token_source(str(tmp_path))
    with pytest.raises(TokenDataError, match="no token data"):
        open_token_source(str(tmp_path / "missing"))
