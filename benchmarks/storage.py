"""Bytes per stored token and training read speed, per Parquet encoding of the `tokens` column.

Token sources (each at 32, 256 and 1 000 rows per file, `--rows`):
  real       the job's own output (`process_shard`: stream, decode, encode, the job's writer) of
             the bundled sample corpus: the trained embedded default tokenizer (V 1 024), a
             random-weight var-vqvae (V 4 096) and a random-weight grouped GSQ (V 8 192, 16 groups)
  uniform    i.i.d. uniform codes: every code equally likely, the worst case for any coder (a
             trained codebook in full use comes close: entropy ~ log2 V); 680 codes per row for
             V 1 024 and 4 096 (VAR's 10 scales), 64 positions x 16 groups for V 8 192

Encodings compared on the same tables (the `tokens` column; every other column as the job writes it):
  dict-z3      Parquet dictionary + RLE/bit-packing, zstd 3 (the writer's setting until 2026-12)
  bss-z3       BYTE_STREAM_SPLIT (the code's bytes in separate streams), zstd 3
  bss-z16      BYTE_STREAM_SPLIT, zstd 16 (zstd's block splitter gives each stream its own table)
  delta-z3     DELTA_BINARY_PACKED, zstd 3
  job          what `pipeline.sinks.writer.parquet_bytes` writes now: dict-z3 where the column has
               at least 64 tokens per distinct code, else BYTE_STREAM_SPLIT with zstd 16 up to
               1 MiB of plain codes and zstd 3 above (pipeline/sinks/writer.py `write_options`)

Per (source, rows, encoding): the tokens column's compressed bytes per token and its ratio to
log2(V)/8, the whole file's bytes per token, the write time, and the training read time (tokens +
status columns from memory into one flat numpy array), medians of alternated repetitions.

    python benchmarks/storage.py                           # everything (tokenizes 3 x 1 000 images)
    python benchmarks/storage.py --rows 32 --sources uniform-v4096

One JSON line per (source, rows, encoding) goes to benchmarks/results/storage.jsonl, with the conditions.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.runner.build import build_tokenizer, plan_job  # noqa: E402
from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.shard_task import process_shard  # noqa: E402
from pipeline.sinks.schema import TokenRow, build_table, token_schema  # noqa: E402
from pipeline.sinks.writer import DEFAULT_ROW_GROUP_ROWS, WRITE_OPTIONS, OutputLayout, parquet_bytes  # noqa: E402
from pipeline.sources.listing import expand_shards  # noqa: E402
from pipeline.sources.sample_corpus import write_sample_corpus  # noqa: E402

TOKENS_LEAF = "tokens.list.element"
# name -> (registry name, constructor config, image size): real tokens through the job
REAL = {
    "default-v1024-trained": ("default", None, 128),
    "var-vqvae-v4096-random": ("var-vqvae", {"ch": 32, "vocab_size": 4096, "z_channels": 32}, 256),
    "gsq-v8192-g16-random": ("gsq", {"hidden_channels": 32}, 64),
}
# name -> (V, groups, codes per row)
UNIFORM = {"uniform-v1024": (1024, 1, 680), "uniform-v4096": (4096, 1, 680), "uniform-v8192-g16": (8192, 16, 1024)}


def leaf_options(table: pa.Table, tokens: dict[str, Any], level: int) -> dict[str, Any]:
    """Writer options: every column as before (dictionary, zstd 3), the tokens leaf as given."""
    others = [f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in table.schema
              if f.name != "tokens"]
    return {**WRITE_OPTIONS, "use_dictionary": others, "column_encoding": tokens,
            "compression_level": {**{c: WRITE_OPTIONS["compression_level"] for c in others}, TOKENS_LEAF: level}}


def write_with(options: Callable[[pa.Table], dict[str, Any]]) -> Callable[[pa.Table], bytes]:
    def write(table: pa.Table) -> bytes:
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=DEFAULT_ROW_GROUP_ROWS, **options(table))
        return sink.getvalue()
    return write


ENCODINGS: dict[str, Callable[[pa.Table], bytes]] = {
    "dict-z3": write_with(lambda t: {**WRITE_OPTIONS, "use_dictionary": True, "compression_level": 3}),
    "bss-z3": write_with(lambda t: leaf_options(t, {TOKENS_LEAF: "BYTE_STREAM_SPLIT"}, 3)),
    "bss-z16": write_with(lambda t: leaf_options(t, {TOKENS_LEAF: "BYTE_STREAM_SPLIT"}, 16)),
    "delta-z3": write_with(lambda t: leaf_options(t, {TOKENS_LEAF: "DELTA_BINARY_PACKED"}, 3)),
    "job": parquet_bytes,  # dict-z3 where the dictionary is amortised, else bss-z16 / bss-z3 by size
}


def real_table(name: str, work: str, rows: int) -> tuple[pa.Table, int, int]:
    """`rows` sample-corpus images through the job's shard path; the table it wrote, V, groups."""
    registry, config, size = REAL[name]
    corpus = os.path.join(work, f"corpus-{rows}")
    if not os.path.isdir(corpus):
        write_sample_corpus(corpus, num_shards=1, samples_per_shard=rows, max_side=max(160, size + size // 4))
    tok_json = None
    if config is not None:
        tok_json = os.path.join(work, f"{name}.json")
        with open(tok_json, "w") as f:
            json.dump(config, f)
    out = os.path.join(work, f"{name}-{rows}")
    cfg = TokenizeConfig(input=[os.path.join(corpus, "sample-000000.tar")], output=out, tokenizer=registry,
                         tokenizer_config=tok_json, image_size=size, batch_size=16, progress=False)
    spec, _ = plan_job(cfg)
    tok = build_tokenizer(spec)
    layout = OutputLayout(out)
    layout.makedirs()
    for shard in expand_shards(cfg.input):
        result = process_shard(shard, tok, spec, layout)
        if not result.ok:
            raise SystemExit(f"{name}: shard {shard.name} failed: {result.error}")
    table = pq.read_table(os.path.join(out, "tokens", "sample-000000.parquet"))
    return table.filter(pc.equal(table["status"], "ok")), int(tok.vocab_size), int(tok.groups)


def uniform_table(name: str, rows: int, seed: int = 0) -> tuple[pa.Table, int, int]:
    vocab, groups, per_row = UNIFORM[name]
    rng = np.random.default_rng(seed)
    records = [TokenRow(key=f"sample-{i:06d}", shard="uniform", label=i % 1000, height=256, width=256,
                        height_padded=256, width_padded=256, tokens=rng.integers(0, vocab, per_row),
                        scale_shapes=[16, 16]) for i in range(rows)]
    return build_table(records, token_schema(vocab, metadata={"vocab_size": vocab, "groups": groups})), vocab, groups


def tokens_column_bytes(data: bytes) -> tuple[int, int]:
    """(compressed bytes of the tokens column chunks, of all column chunks)."""
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    tokens = total = 0
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            total += chunk.total_compressed_size
            if chunk.path_in_schema == TOKENS_LEAF:
                tokens += chunk.total_compressed_size
    return tokens, total


def training_read(data: bytes) -> np.ndarray:
    """What training does with a file: the ok rows' tokens as one flat array."""
    table = pq.read_table(io.BytesIO(data), columns=["tokens", "status"])
    table = table.filter(pc.equal(table["status"], "ok"))
    return table.column("tokens").combine_chunks().flatten().to_numpy()


def elapsed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(table: pa.Table, vocab: int, reps: int, read_reps: int) -> dict[str, dict[str, Any]]:
    """Every encoding on `table`: sizes, write and read times (alternated across encodings)."""
    expected = table.column("tokens").combine_chunks().flatten().to_numpy()
    files = {name: write(table) for name, write in ENCODINGS.items()}
    writes: dict[str, list[float]] = {n: [] for n in ENCODINGS}
    reads: dict[str, list[float]] = {n: [] for n in ENCODINGS}
    for _ in range(reps):
        for name, write in ENCODINGS.items():
            writes[name].append(elapsed(lambda write=write: write(table)))
    for _ in range(read_reps):  # a read is ~1 ms at 32 rows: many repetitions to see a difference
        for name, data in files.items():
            reads[name].append(elapsed(lambda data=data: training_read(data)))
    out = {}
    for name, data in files.items():
        if not np.array_equal(training_read(data), expected):
            raise SystemExit(f"{name}: tokens did not read back equal")
        col, chunks = tokens_column_bytes(data)
        out[name] = {"tokens_col_bytes_per_token": col / expected.size,
                     "ratio_to_log2V": col / expected.size / (math.log2(vocab) / 8),
                     "file_bytes_per_token": len(data) / expected.size, "file_bytes": len(data),
                     "write_ms": 1e3 * statistics.median(writes[name]), "read_ms": 1e3 * statistics.median(reads[name])}
    return out


def entropy_bits(values: np.ndarray, vocab: int) -> float:
    counts = np.bincount(values.astype(np.int64), minlength=vocab)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", default=",".join([*REAL, *UNIFORM]), help=f"any of {', '.join([*REAL, *UNIFORM])}")
    p.add_argument("--rows", default="32,256,1000", help="rows per file (real sources: the first rows of one job output)")
    p.add_argument("--reps", type=int, default=5, help="alternated write repetitions per encoding")
    p.add_argument("--read-reps", type=int, default=60, help="alternated read repetitions per encoding")
    p.add_argument("--json", default=str(RESULTS / "storage.jsonl"))
    args = p.parse_args(argv)
    stamp = {"benchmark": "storage_encodings", **conditions("cpu")}
    print(f"# {json.dumps(stamp)}", flush=True)
    work = tempfile.mkdtemp(prefix="scaletok-storage-")
    try:
        print(f"{'source':<24} {'rows':>5} {'V':>5} {'H/8':>6} {'encoding':<9} {'col B/tok':>9} {'x log2V/8':>9} "
              f"{'file B/tok':>10} {'write ms':>8} {'read ms':>8}", flush=True)
        row_counts = [int(r) for r in args.rows.split(",")]
        for name in args.sources.split(","):
            if name in REAL:
                job_table, vocab, groups = real_table(name, work, max(row_counts))
            for rows in row_counts:
                if name in REAL:
                    table = job_table.slice(0, rows)
                else:
                    table, vocab, groups = uniform_table(name, rows)
                values = table.column("tokens").combine_chunks().flatten().to_numpy()
                h = entropy_bits(values, vocab)
                for enc, r in compare(table, vocab, args.reps, args.read_reps).items():
                    print(f"{name:<24} {table.num_rows:>5} {vocab:>5} {h / 8:>6.3f} {enc:<9} "
                          f"{r['tokens_col_bytes_per_token']:>9.3f} {r['ratio_to_log2V']:>9.3f} "
                          f"{r['file_bytes_per_token']:>10.3f} {r['write_ms']:>8.1f} {r['read_ms']:>8.2f}", flush=True)
                    append_jsonl(args.json, {**stamp, "source": name, "rows": table.num_rows, "vocab": vocab,
                                             "groups": groups, "tokens": int(values.size),
                                             "entropy_bits": h, "encoding": enc, **r})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
