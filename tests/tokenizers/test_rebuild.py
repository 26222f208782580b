"""One way to rebuild a tokenizer from a stored record (token-file metadata or a training
checkpoint's record), with its fingerprint checked."""

from __future__ import annotations

import pytest

from pipeline.tokenizers import TokenizerMismatch, load_tokenizer, tokenizer_from_metadata

CONFIG = {"ch": 32, "vocab_size": 64, "z_channels": 8, "v_patch_nums": [1, 2, 4]}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("var-vqvae", None, CONFIG, preprocess={"size": 64})


def parquet_record(tok) -> dict:
    d = tok.describe()
    return {"tokenizer": d["name"], "tokenizer_config": d["config"], "preprocess": d["preprocess"],
            "precision": d["precision"], "fingerprint": tok.fingerprint()}


def test_both_record_shapes_rebuild_the_same_tokenizer(tok):
    from_parquet = tokenizer_from_metadata(parquet_record(tok))
    checkpoint_record = {"name": "var-vqvae", "config": CONFIG, "checkpoint": None,
                         "options": {"preprocess": tok.describe()["preprocess"], "precision": "fp32"},
                         "fingerprint": tok.fingerprint()}
    from_checkpoint = tokenizer_from_metadata(checkpoint_record)
    assert from_parquet.fingerprint() == from_checkpoint.fingerprint() == tok.fingerprint()
    assert from_parquet.preprocess_config.size == 64  # preprocessing comes from the record


def test_a_different_tokenizer_is_refused(tok):
    record = parquet_record(tok)
    with pytest.raises(TokenizerMismatch, match="fingerprint"):
        tokenizer_from_metadata({**record, "preprocess": {**record["preprocess"], "size": 128}})
    with pytest.raises(TokenizerMismatch, match="fingerprint"):
        tokenizer_from_metadata(record, config={**CONFIG, "vocab_size": 32})
    other = tokenizer_from_metadata({**record, "fingerprint": "0" * 32}, check=False)
    assert other.fingerprint() == tok.fingerprint()
    with pytest.raises(TokenizerMismatch, match="name"):
        tokenizer_from_metadata({"fingerprint": "x"})
