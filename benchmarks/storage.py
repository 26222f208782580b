"""Bytes per stored token: the job's Parquet output against log2(vocabulary) bits.

The bundled sample corpus is tokenized with a few tokenizers of different codebooks through the
job's own shard path (`process_shard`, in process: stream, decode, encode, the job's writer), and
for each output we report, per stored token (a grouped code counts once per group):

  file        the whole Parquet file (every column, footer and metadata)
  tokens_col  the `tokens` column chunks alone (compressed), and uncompressed (zstd's effect)
  no_zstd     the same table written without compression
  ideal       log2(V) / 8: a fixed-width bit-packing of the codes
  entropy     the codes' empirical unigram entropy / 8: what an order-0 coder could reach

Random-weight tokenizers spread codes almost uniformly (nothing for zstd to find); the trained
default tokenizer shows what real codes give.

    python benchmarks/storage.py                      # 3 tokenizers, 32 images
    python benchmarks/storage.py --images 8 --tokenizers var-vqvae-v4096

One JSON line per tokenizer goes to benchmarks/results/storage.jsonl, with the conditions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.runner.build import build_tokenizer, plan_job  # noqa: E402
from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.shard_task import process_shard  # noqa: E402
from pipeline.sinks.writer import WRITE_OPTIONS, OutputLayout  # noqa: E402
from pipeline.sources.listing import expand_shards  # noqa: E402
from pipeline.sources.sample_corpus import write_sample_corpus  # noqa: E402

# name -> (registry name, constructor config, image size)
TOKENIZERS = {
    "var-vqvae-v4096": ("var-vqvae", {"ch": 32, "vocab_size": 4096, "z_channels": 32}, 256),
    "default-v1024-trained": ("default", None, 128),
    "gsq-v8192-g16": ("gsq", {"hidden_channels": 32}, 256),
}


def tokenize(name: str, work: str, pattern: str) -> tuple[str, int, int]:
    """Tokenize the corpus with `name`; returns (output dir, vocab size, groups)."""
    registry, config, size = TOKENIZERS[name]
    tok_json = None
    if config is not None:
        tok_json = os.path.join(work, f"{name}.json")
        with open(tok_json, "w") as f:
            json.dump(config, f)
    out = os.path.join(work, name)
    cfg = TokenizeConfig(input=[pattern], output=out, tokenizer=registry, tokenizer_config=tok_json,
                         image_size=size, batch_size=8, progress=False)
    spec, _ = plan_job(cfg)
    tok = build_tokenizer(spec)
    layout = OutputLayout(out)
    layout.makedirs()
    for shard in expand_shards(cfg.input):
        result = process_shard(shard, tok, spec, layout)
        if not result.ok:
            raise SystemExit(f"{name}: shard {shard.name} failed: {result.error}")
    return out, int(tok.vocab_size), int(tok.groups)


def measure(out: str, vocab: int, groups: int) -> dict:
    files = sorted(os.path.join(out, "tokens", f) for f in os.listdir(os.path.join(out, "tokens")))
    file_bytes = tokens = col_compressed = col_uncompressed = no_zstd = all_chunks = rows = 0
    counts = np.zeros(vocab, dtype=np.int64)
    for path in files:
        file_bytes += os.path.getsize(path)
        table = pq.read_table(path)
        values = table.column("tokens").combine_chunks().flatten().to_numpy()
        tokens += values.size
        rows += table.num_rows
        counts += np.bincount(values.astype(np.int64), minlength=vocab)[:vocab]
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                chunk = meta.row_group(g).column(c)
                all_chunks += chunk.total_compressed_size
                if chunk.path_in_schema.startswith("tokens."):
                    col_compressed += chunk.total_compressed_size
                    col_uncompressed += chunk.total_uncompressed_size
        plain = os.path.join(out, "plain.parquet")
        options = {k: v for k, v in WRITE_OPTIONS.items() if k != "compression_level"}
        pq.write_table(table, plain, row_group_size=2048, **{**options, "compression": "none"})
        no_zstd += os.path.getsize(plain)
        os.remove(plain)
    p = counts[counts > 0] / max(1, counts.sum())
    entropy = float(-(p * np.log2(p)).sum())
    return {
        "files": len(files), "rows": rows, "tokens": int(tokens), "vocab": vocab, "groups": groups,
        "bytes_per_token": {
            "file": file_bytes / tokens, "tokens_col": col_compressed / tokens,
            "tokens_col_uncompressed": col_uncompressed / tokens, "no_zstd_file": no_zstd / tokens,
            "ideal_log2V": math.log2(vocab) / 8, "entropy": entropy / 8, "raw_uint16": 2.0,
        },
        "used_codes": int((counts > 0).sum()), "entropy_bits": entropy,
        # Fixed cost per file (footer: schema + scaletok.* metadata), whatever the shard's size.
        "footer_bytes_per_file": (file_bytes - all_chunks) / len(files),
        "other_columns_bytes_per_row": (all_chunks - col_compressed) / max(1, rows),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", default=",".join(TOKENIZERS), help=f"any of {', '.join(TOKENIZERS)}")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--json", default=str(RESULTS / "storage.jsonl"))
    args = p.parse_args(argv)
    stamp = conditions("cpu")
    print(f"# {json.dumps(stamp)}", flush=True)
    work = tempfile.mkdtemp(prefix="scaletok-storage-")
    try:
        write_sample_corpus(os.path.join(work, "corpus"), num_shards=args.shards,
                            samples_per_shard=max(1, args.images // args.shards), max_side=640)
        pattern = os.path.join(work, "corpus", f"sample-{{000000..{args.shards - 1:06d}}}.tar")
        print(f"{'tokenizer':<24} {'V':>6} {'G':>3} {'tokens':>8} {'file':>6} {'col':>6} {'col raw':>7} "
              f"{'no zstd':>7} {'log2V/8':>7} {'H/8':>6}   (bytes per token)")
        for name in args.tokenizers.split(","):
            out, vocab, groups = tokenize(name, work, pattern)
            r = measure(out, vocab, groups)
            b = r["bytes_per_token"]
            print(f"{name:<24} {vocab:>6} {groups:>3} {r['tokens']:>8} {b['file']:>6.3f} {b['tokens_col']:>6.3f} "
                  f"{b['tokens_col_uncompressed']:>7.3f} {b['no_zstd_file']:>7.3f} {b['ideal_log2V']:>7.3f} "
                  f"{b['entropy']:>6.3f}   footer {r['footer_bytes_per_file'] / 1024:.1f} KiB/file, other "
                  f"columns {r['other_columns_bytes_per_row']:.0f} B/row", flush=True)
            append_jsonl(args.json, {"benchmark": "storage", **stamp, "tokenizer": name,
                                     "registry": TOKENIZERS[name][0], "config": TOKENIZERS[name][1],
                                     "image_size": TOKENIZERS[name][2], "images": args.images, **r})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
