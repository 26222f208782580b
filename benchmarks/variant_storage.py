"""What each stored augmentation variant costs: bytes on disk and encode time per image.

    python benchmarks/variant_storage.py                         # 64 images, default tokenizer
    python benchmarks/variant_storage.py --size 256 --tokenizer-config '{"ch": 32, "vocab_size": 4096}' \
        --tokenizer var-vqvae --images 32

One shard of the bundled sample corpus goes through the job's own shard path (`process_shard`:
stream, decode, image policy, encode, the job's writer) once per `--variants` setting; per setting:
rows, the data file's bytes, bytes per image and per row, the extra bytes of each variant row over
the plain file, and the shard's wall time per image. One JSON line per setting goes to
benchmarks/results/variant_storage.jsonl with the conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions  # noqa: E402

from pipeline.runner.build import build_tokenizer, plan_job  # noqa: E402
from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.shard_task import process_shard  # noqa: E402
from pipeline.sinks.writer import OutputLayout  # noqa: E402
from pipeline.sources.listing import expand_shards  # noqa: E402
from pipeline.sources.sample_corpus import write_sample_corpus  # noqa: E402

SETTINGS = ["", "hflip", "crop:1", "crop:4", "crop:4,hflip", "crop:8"]


def tokenize(corpus: str, out: str, args: argparse.Namespace, variants: str) -> dict:
    tok_json = None
    if args.tokenizer_config:
        tok_json = os.path.join(out + "-tok.json")
        with open(tok_json, "w") as f:
            f.write(args.tokenizer_config)
    cfg = TokenizeConfig(input=[corpus], output=out, tokenizer=args.tokenizer, tokenizer_config=tok_json,
                         image_size=args.size, batch_size=16, progress=False,
                         variants=[v for v in variants.split(",") if v])
    spec, _ = plan_job(cfg)
    tok = build_tokenizer(spec)
    layout = OutputLayout(out)
    layout.makedirs()
    shard = expand_shards(cfg.input)[0]
    t = time.perf_counter()
    result = process_shard(shard, tok, spec, layout)
    seconds = time.perf_counter() - t
    if not result.ok:
        raise SystemExit(f"{variants or 'plain'}: {result.error}")
    nbytes = os.path.getsize(os.path.join(out, "tokens", f"{shard.name}.parquet"))
    return {"variants": variants or "none", "rows": result.rows, "images": result.images_ok, "bytes": nbytes,
            "bytes_per_image": round(nbytes / result.images_ok, 1), "bytes_per_row": round(nbytes / result.rows, 1),
            "s_per_image": round(seconds / result.images_ok, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--tokenizer", default="default")
    p.add_argument("--tokenizer-config", default=None, help="constructor config as JSON text")
    p.add_argument("--size", type=int, default=None, help="image size (default: the tokenizer's)")
    p.add_argument("--settings", nargs="*", default=SETTINGS)
    p.add_argument("--json", default=str(RESULTS / "variant_storage.jsonl"))
    args = p.parse_args()
    stamp = conditions("cpu")
    with tempfile.TemporaryDirectory(prefix="variant-storage-") as tmp:
        corpus = write_sample_corpus(os.path.join(tmp, "corpus"), num_shards=1, samples_per_shard=args.images,
                                     max_side=384)[0]
        results = [tokenize(corpus, os.path.join(tmp, f"out{i}"), args, v) for i, v in enumerate(args.settings)]
    plain = next((r for r in results if r["variants"] == "none"), None)
    for r in results:
        if plain is not None and r["rows"] > plain["rows"]:
            r["extra_bytes_per_variant_row"] = round((r["bytes"] - plain["bytes"]) / (r["rows"] - plain["rows"]), 1)
        print(json.dumps(r))
        append_jsonl(args.json, {"benchmark": "variant_storage", "conditions": stamp, "tokenizer": args.tokenizer,
                                 "size": args.size, **r})


if __name__ == "__main__":
    main()
