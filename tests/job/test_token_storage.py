"""The tokens column's Parquet encoding (pipeline/sinks/writer.py `write_options`): compact at any
row count, deterministic, and readable by third-party readers (pyarrow, pandas, DuckDB, Ray Data).

Codes are i.i.d. uniform here, the worst case for any coder (a trained codebook in full use comes
close: its entropy is near log2 V); benchmarks/storage.py measures real tokens too."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.sinks.schema import TokenRow, build_table, token_schema
from pipeline.sinks.writer import TOKENS_LEAF, parquet_bytes

# (V, codes per row): VAR's 680 codes per image; a grouped GSQ codebook: 8x8 positions x 16 groups
CASES = [(1024, 680), (4096, 680), (8192, 1024)]


def uniform_rows(rows: int, vocab: int, per_row: int, seed: int = 0, failed: int = 1) -> list[TokenRow]:
    rng = np.random.default_rng(seed)
    out = [TokenRow(key=f"k{i:05d}", shard="s", label=i, height=256, width=256, height_padded=256, width_padded=256,
                    tokens=rng.integers(0, vocab, per_row), scale_shapes=[16, 16]) for i in range(rows)]
    return out + [TokenRow(key=f"bad{i}", shard="s", status="decode_error", error="boom") for i in range(failed)]


def write(rows: list[TokenRow], vocab: int) -> bytes:
    return parquet_bytes(build_table(rows, token_schema(vocab, metadata={"vocab_size": vocab})))


def column(data: bytes, path: str = TOKENS_LEAF):
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)
              if meta.row_group(g).column(c).path_in_schema == path]
    return chunks


def tokens_bytes_per_code(data: bytes, codes: int) -> float:
    return sum(c.total_compressed_size for c in column(data)) / codes


@pytest.mark.parametrize("rows", [32, 1000])
@pytest.mark.parametrize("vocab,per_row", CASES)
def test_tokens_column_within_a_tenth_of_log2_v(rows, vocab, per_row):
    data = write(uniform_rows(rows, vocab, per_row), vocab)
    bytes_per_code = tokens_bytes_per_code(data, rows * per_row)
    assert bytes_per_code <= 1.1 * math.log2(vocab) / 8, (vocab, rows, bytes_per_code)


def test_encoding_follows_the_column():
    small = write(uniform_rows(32, 4096, 680), 4096)  # 21 760 codes, ~4 000 distinct: no dictionary
    (chunk,) = column(small)
    assert "BYTE_STREAM_SPLIT" in chunk.encodings and "RLE_DICTIONARY" not in chunk.encodings
    assert chunk.compression == "ZSTD"
    assert "RLE_DICTIONARY" in column(small, "key")[0].encodings  # every other column as before
    assert "RLE_DICTIONARY" in column(small, "scale_shapes.list.element")[0].encodings
    large = write(uniform_rows(1000, 1024, 680), 1024)  # 664 uses per code: the dictionary pays
    assert all("RLE_DICTIONARY" in c.encodings for c in column(large))
    wide = write(uniform_rows(8, 100_000, 680), 100_000)  # int32 codes
    assert "BYTE_STREAM_SPLIT" in column(wide)[0].encodings and column(wide)[0].physical_type == "INT32"


def test_same_rows_same_bytes_on_both_paths():
    for rows, vocab in ((32, 4096), (1000, 1024)):
        assert write(uniform_rows(rows, vocab, 680), vocab) == write(uniform_rows(rows, vocab, 680), vocab)
    assert write(uniform_rows(32, 4096, 680, seed=0), 4096) != write(uniform_rows(32, 4096, 680, seed=1), 4096)


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    """One file per writer path: byte-stream-split uint16, byte-stream-split int32, dictionary."""
    root = tmp_path_factory.mktemp("storage")
    files = {}
    for name, rows, vocab in (("bss-uint16", 32, 4096), ("bss-int32", 16, 100_000), ("dict-uint16", 1000, 1024)):
        records = uniform_rows(rows, vocab, 680, seed=rows)
        path = root / f"{name}.parquet"
        path.write_bytes(write(records, vocab))
        files[name] = (str(path), [r.tokens.tolist() for r in records if r.status == "ok"])
    return files


def test_pandas_and_duckdb_read_every_path(token_files):
    import duckdb
    import pandas as pd

    for name, (path, expected) in token_files.items():
        frame = pd.read_parquet(path)
        ok = frame[frame["status"] == "ok"]
        assert [list(map(int, t)) for t in ok["tokens"]] == expected, name
        rows = duckdb.sql(f"SELECT tokens FROM read_parquet('{path}') WHERE status = 'ok' ORDER BY key").fetchall()
        assert [list(r[0]) for r in rows] == expected, name


def test_ray_data_reads_every_path(ray_cluster, token_files):
    import ray.data

    for name, (path, expected) in token_files.items():
        ds = ray.data.read_parquet(path).filter(expr="status == 'ok'")
        got = sorted((r["key"], [int(v) for v in r["tokens"]]) for r in ds.take_all())
        assert [t for _, t in got] == expected, name
