"""`scaletok tokenize` / `python -m jobs.tokenize`: tokenize WebDataset shards into token Parquet.

This is the entry point for `ray job submit --working-dir . -- python -m jobs.tokenize ...`.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import add_dataclass_args, config_from_args
from pipeline.runner.config import TokenizeConfig

HELP = {
    "input": "WebDataset shard URL or pattern: path, file://, s3://, any fsspec URL; braces, globs, '::' lists",
    "output": "output directory or URL (tokens/, _manifest/, _stats.json go there)",
    "tokenizer": "registry name, e.g. var-vqvae",
    "checkpoint": "weights file (.pth/.safetensors); seeded random weights without it",
    "tokenizer_config": "JSON file with the tokenizer's constructor arguments",
    "tokenizer_module": "extra module to import in every actor (registers plugin tokenizers)",
    "image_size": "side the image policy resizes/crops to (default: the tokenizer's)",
    "image_policy": "center-crop | resize | native (default: native with --tile-size, else center-crop)",
    "max_side": "native policy: shrink images whose longer side exceeds this",
    "tile_size": "encode native-size images in tiles of this many pixels",
    "overlap": "tile overlap in pixels",
    "patch_nums": "scale schedule, e.g. 1,2,3,4,5,6,8,10,13,16 (default: the tokenizer's)",
    "scale_superset": "store every scale 1..N (N = last of the schedule) so FlexVAR-style schedules can be sliced",
    "variants": "augmentation variants stored as extra rows: hflip, vflip (comma-separated)",
    "num_actors": "tokenizer actors (default: one per GPU, or one per --cpus-per-actor CPUs)",
    "gpus_per_actor": "GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    "cpus_per_actor": "CPUs per actor (torch threads and decode threads)",
    "batch_size": "images per encoder call, or 'auto': each actor measures the batch that fills its device "
                  "(doubling until out of memory, over 80%% of GPU memory / half the free RAM, or no more img/s)",
    "max_batch_size": "the largest batch --batch-size auto tries",
    "decode_threads": "image decode threads per actor (default: max(2, cpus-per-actor))",
    "gpu_decode": "decode JPEGs on the actor's GPU with nvJPEG (needs torchvision with CUDA; other pixels than "
                  "Pillow, so its own fingerprint; non-JPEGs and images nvJPEG refuses go through Pillow)",
    "precision": "fp32 | bf16 encoder autocast (nearest-code search is always fp32)",
    "max_shard_retries": "retries of a shard whose attempt failed (unreadable, actor died) before it is reported",
    "startup_wait_s": "wait up to this long for the whole actor pool before handing out shards (benchmarks)",
    "actor_start_timeout_s": "fail the job if not one tokenizer actor is placed and started within this many "
                             "seconds (the cluster is full, or no node will ever fit one)",
    "max_image_pixels": "decompression-bomb guard: larger images get status too_large",
    "max_member_bytes": "tar members larger than this are not read (status too_large)",
    "row_group_rows": "Parquet row group size in rows",
    "overwrite": "delete an output written by a different tokenizer/config instead of refusing",
    "latent_dtype": "continuous tokenizers (vitok): float16 | float32 storage of the latents (float32 needs --precision fp32)",
    "storage_options": "fsspec option for remote input/output, e.g. endpoint_url=http://... (--storage-option)",
    "address": "Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    "progress": "show the progress bar",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, TokenizeConfig, help_texts=HELP)
    # The spelling; appends to the same field as --storage-options.
    parser.add_argument("--storage-option", dest="storage_options", action="append", default=None,
                        metavar="KEY=VALUE", help="same as --storage-options (repeatable)")


def run(args: argparse.Namespace) -> int:
    from pipeline.runner.job import OutputConflict, run_tokenize

    try:
        cfg = config_from_args(TokenizeConfig, args)
        return run_tokenize(cfg)
    except (ValueError, KeyError, OutputConflict, FileNotFoundError) as e:
        print(f"scaletok tokenize: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tokenize", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
