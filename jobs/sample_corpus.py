"""Write the bundled sample corpus (real photos from scikit-image) as WebDataset shards.

    scaletok sample-corpus OUT_DIR [--num-shards 4] [--samples-per-shard 64] [--seed 0] [--max-side 640]
    python -m jobs.sample_corpus OUT_DIR ...
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.cli import job_main
from pipeline.errors import checking_inputs
from pipeline.sources.sample_corpus import DEFAULT_MAX_SIDE, write_sample_corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory for sample-000000.tar, sample-000001.tar, ...")
    parser.add_argument("--num-shards", type=int, default=4, help="number of tar shards (default 4)")
    parser.add_argument("--samples-per-shard", type=int, default=64, help="samples in each shard (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops/flips/sizes (default 0)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help=f"longest image side in pixels (default {DEFAULT_MAX_SIDE}; small values make tiny corpora)")


def run(args: argparse.Namespace) -> int:
    with checking_inputs(FileExistsError):
        paths = write_sample_corpus(args.out_dir, num_shards=args.num_shards,
                                    samples_per_shard=args.samples_per_shard, seed=args.seed,
                                    max_side=args.max_side)
    total_bytes = sum(os.path.getsize(p) for p in paths)
    for path in paths:
        print(path)
    print(f"wrote {len(paths)} shards, {len(paths) * args.samples_per_shard} samples, "
          f"{total_bytes / 1e6:.1f} MB to {args.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.sample_corpus", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
