"""`scaletok encode`: tokenize a few image files locally and save what the tokens look like.

Writes OUT/tokens.npz (flattened tokens + scale shapes per image) and OUT/scales.png (each image
next to its reconstruction after every scale). No Ray: this is for looking at a tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

from pipeline.cli import job_main
from pipeline.errors import UsageError, checking_inputs, one_line
from pipeline.tokenizers import PreprocessConfig, load_tokenizer
from pipeline.viz import scale_grid, to_uint8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tokenizer", default="var-vqvae", help="tokenizer name (default: var-vqvae)")
    p.add_argument("--checkpoint", default=None, help="tokenizer weights (.safetensors/.pth/.ckpt)")
    p.add_argument("--tokenizer-config", default=None, help="JSON file of the reference constructor arguments")
    p.add_argument("--image-size", type=int, default=None, help="centre-crop size (default: the tokenizer's)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 | bf16 encoder autocast (nearest-code search is always fp32; default fp32)")


def load_tokenizer_from_args(args: argparse.Namespace):
    config = None
    if args.tokenizer_config:
        with open(args.tokenizer_config) as f:
            config = json.load(f)
    options = {"precision": args.precision}
    if args.image_size:
        options["preprocess"] = PreprocessConfig(size=args.image_size)
    return load_tokenizer(args.tokenizer, checkpoint=args.checkpoint, config=config, **options)


def read_images(paths: list[str]) -> tuple[list[Image.Image], dict[str, str]]:
    """The readable images among `paths`, and why each of the others is not one."""
    images, unreadable = [], {}
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except (OSError, SyntaxError) as exc:
            unreadable[path] = one_line(exc)
    return images, unreadable


def run(args: argparse.Namespace) -> int:
    with checking_inputs():
        tok = load_tokenizer_from_args(args)
    images, unreadable = read_images(args.images)
    if not images:
        raise UsageError("no readable image among " + "; ".join(f"{p} ({why})" for p, why in unreadable.items()))
    for path, why in unreadable.items():
        print(f"skipping {path}: not a readable image ({why})", file=sys.stderr)
    x = tok.preprocess(images)
    tokens = tok.encode(x)
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "tokens.npz"), tokens=tokens.flat().numpy(),
             scale_shapes=np.array(tokens.scale_shapes), patch_nums=np.array(tokens.patch_nums))
    n = len(tokens.grids)
    per_scale = [to_uint8(tok.decode(tokens, upto=k), tok.input_range) for k in range(1, n + 1)]
    labels = [f"{h}x{w}" for h, w in tokens.scale_shapes]
    grid = scale_grid(to_uint8(x, tok.input_range), per_scale, labels)
    grid.save(os.path.join(args.out, "scales.png"))
    print(f"{len(images)} images -> {tokens.num_tokens} tokens each over {n} scales; "
          f"wrote {args.out}/tokens.npz and {args.out}/scales.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.encode", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
