"""`scaletok train` / `python -m jobs.train_var`: fit a VAR transformer on token Parquet with Ray Train.

Rerunning the same command (same --storage-path and --name) resumes from the latest checkpoint.
Writes <storage-path>/<name>/{checkpoint_*/, metrics.jsonl, metrics.png, train_config.yaml}.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import job_main
from pipeline.config import add_dataclass_args, config_from_args
from pipeline.errors import checking_inputs
from pipeline.var.train_config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from pipeline.var.data import TokenDataError
    from pipeline.var.train import fit

    with checking_inputs(TokenDataError):
        cfg = config_from_args(TrainConfig, args)
        result = fit(cfg)
    summary = {"run_dir": result.run_dir, "steps": result.final_step, "max_steps": result.max_steps,
               "checkpoint": result.checkpoint, "metrics": result.metrics}
    print(json.dumps(summary, indent=1, default=str))
    # A run stopped on purpose (--stop-at-step) reached its goal; rerunning resumes it.
    return 0 if result.final_step == min(result.max_steps, cfg.stop_at_step or result.max_steps) else 1


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.train_var", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
