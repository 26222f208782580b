"""`scaletok demo` / `make demo`: the main job end to end on the bundled sample corpus.

Steps: write the sample corpus (real photos from scikit-image) as WebDataset shards, tokenize it
with the embedded default tokenizer, and save a picture of the reconstructions at every scale.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile

from PIL import Image

from pipeline.sources.sample_corpus import write_sample_corpus
from pipeline.tokenizers import load_tokenizer
from pipeline.viz import scale_grid, to_uint8

# Until a trained default ships, the demo tokenizer is a small VAR VQ-VAE with seeded weights.
DEMO_TOKENIZER = {"name": "var-vqvae", "config": {"ch": 32, "vocab_size": 4096, "z_channels": 32}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    p.add_argument("--num-shards", type=int, default=4)
    p.add_argument("--samples-per-shard", type=int, default=16)
    p.add_argument("--max-side", type=int, default=384, help="longest side of the corpus images")


def first_images(shard: str, count: int) -> list[Image.Image]:
    images = []
    with tarfile.open(shard) as tar:
        for member in tar:
            if member.name.endswith((".jpg", ".png")) and len(images) < count:
                images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    return images


def run(args: argparse.Namespace) -> int:
    corpus = os.path.join(args.out, "corpus")
    shards = write_sample_corpus(corpus, num_shards=args.num_shards, samples_per_shard=args.samples_per_shard,
                                 max_side=args.max_side)
    print(f"[1/2] sample corpus: {len(shards)} shards in {corpus}")
    tok = load_tokenizer(DEMO_TOKENIZER["name"], config=DEMO_TOKENIZER["config"])
    x = tok.preprocess(first_images(shards[0], 4))
    tokens = tok.encode(x)
    per_scale = [to_uint8(tok.decode(tokens, upto=k)) for k in range(1, len(tokens.grids) + 1)]
    path = os.path.join(args.out, "scales.png")
    scale_grid(to_uint8(x), per_scale, [f"{h}x{w}" for h, w in tokens.scale_shapes]).save(path)
    print(f"[2/2] encoded {x.shape[0]} images into {tokens.num_tokens} tokens each; reconstructions per scale: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
