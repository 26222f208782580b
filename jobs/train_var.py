"""`scaletok train` / `python -m jobs.train_var`: fit a VAR transformer on token Parquet with Ray Train.

Rerunning the same command (same --storage-path and --name) resumes from the latest checkpoint.
Writes <storage-path>/<name>/{checkpoint_*/, metrics.jsonl, metrics.png, train_config.yaml}.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import add_dataclass_args, config_from_args
from pipeline.var.train_config import TrainConfig

HELP = {
    "tokens": "token Parquet written by `scaletok tokenize` (its output dir, tokens/ dir, or URL)",
    "storage_options": "fsspec option for S3 tokens/storage, e.g. client_kwargs={endpoint_url: ...}",
    "tokenizer": "tokenizer name (default: the one named in the Parquet metadata)",
    "tokenizer_checkpoint": "the tokenizer weights the tokens were made with (codebook + phi convs)",
    "tokenizer_config": "tokenizer constructor arguments (default: the Parquet metadata's)",
    "depth": "VAR depth: width 64*depth, heads = depth (16, 20, 24, 30 are released)",
    "var_config": "extra VAR constructor arguments, e.g. embed_dim=64 num_heads=2",
    "var_checkpoint": "initial weights (official var_d*.pth or one of our model.safetensors)",
    "batch_size": "global batch over all workers (default: the depth's README recipe, 768; 1024 for d30)",
    "epochs": "epochs over the usable rows when --max-steps is 0 (default: the depth's recipe, 200/250/350)",
    "max_steps": "optimizer steps (0: --epochs over the usable rows)",
    "tblr": "base lr per 256 images (default: the depth's README recipe)",
    "lr": "peak lr (default: tblr * batch_size / 256)",
    "num_workers": "Ray Train workers (one per GPU with --use-gpu)",
    "cpus_per_worker": "CPUs reserved per worker (default 0.5 on CPU, leaving room for Parquet reads)",
    "storage_path": "where runs live: local dir or s3://bucket/prefix",
    "name": "run name; the same name resumes",
    "fail_at_step": "testing: one worker process exits once at this step (exercises FailureConfig)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, TrainConfig, help_texts=HELP)


def run(args: argparse.Namespace) -> int:
    from pipeline.var.data import TokenDataError
    from pipeline.var.train import fit

    try:
        cfg = config_from_args(TrainConfig, args)
        result = fit(cfg)
    except (ValueError, TokenDataError, FileNotFoundError) as exc:
        print(f"scaletok train: error: {exc}", file=sys.stderr)
        return 2
    summary = {"run_dir": result.run_dir, "steps": result.final_step, "max_steps": result.max_steps,
               "checkpoint": result.checkpoint, "metrics": result.metrics}
    print(json.dumps(summary, indent=1, default=str))
    return 0 if result.final_step == result.max_steps else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_var", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
