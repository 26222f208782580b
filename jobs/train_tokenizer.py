"""`scaletok train-tokenizer` / `python -m jobs.train_tokenizer`: train a tokenizer with Ray Train.

Families: var-vqvae (multi-scale residual VQ-VAE), gq (Gaussian VAE with the per-group KL
constraint, used through the `gq` tokenizer afterwards), gsq (grouped spherical quantisation).
Rerunning the same command (same --storage-path and --name) resumes from the latest checkpoint.
Writes <storage-path>/<name>/{checkpoint_*/, metrics.jsonl, metrics.png, eval/recon_step*.png,
train_config.yaml, tokenizer.safetensors, tokenizer.json}; load the result with
`load_tokenizer(<family>, checkpoint=<run>/tokenizer.safetensors, config=<tokenizer.json>["config"])`.

`--photos-dir DIR` first writes the offline photo set (scikit-image / matplotlib photos) as
DIR/train-000000.tar and DIR/heldout-000000.tar and trains on them (the embedded default's recipe).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import job_main
from pipeline.config import add_dataclass_args, config_from_args
from pipeline.errors import checking_inputs
from pipeline.tokenizer_training.config import TokenizerTrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, TokenizerTrainConfig)
    parser.add_argument("--photos-dir", default=None,
                        help="write the offline photo set here and train on it (overrides --train-shards/--eval-shards)")


def run(args: argparse.Namespace) -> int:
    from pipeline.tokenizer_training.data import NoImagesError
    from pipeline.tokenizer_training.train import fit

    with checking_inputs(NoImagesError):
        if args.photos_dir:
            from pipeline.tokenizer_training.photos import write_photo_shards
            written = write_photo_shards(args.photos_dir)
            args.train_shards, args.eval_shards = written["train"][0], written["heldout"][0]
        cfg = config_from_args(TokenizerTrainConfig, args)
        result = fit(cfg)
    summary = {"run_dir": result.run_dir, "steps": result.final_step, "checkpoint": result.checkpoint,
               "tokenizer": result.export, "metrics": result.metrics}
    print(json.dumps(summary, indent=1, default=str))
    return 0 if result.final_step == cfg.max_steps else 1


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.train_tokenizer", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
