"""`scaletok tokenize` / `python -m jobs.tokenize`: tokenize WebDataset shards into token Parquet.

This is the entry point for `ray job submit --working-dir . -- python -m jobs.tokenize ...`.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import job_main
from pipeline.config import add_dataclass_args, config_from_args
from pipeline.errors import checking_inputs
from pipeline.runner.config import TokenizeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, TokenizeConfig)
    # The spelling; appends to the same field as --storage-options.
    parser.add_argument("--storage-option", dest="storage_options", action="append", default=None,
                        metavar="KEY=VALUE", help="same as --storage-options (repeatable)")


def run(args: argparse.Namespace) -> int:
    from pipeline.runner.job import OutputConflict, run_tokenize

    # The job reports failed shards through its exit code; what raises is a refusal of the
    # command line, the inputs or the output.
    with checking_inputs(OutputConflict):
        cfg = config_from_args(TokenizeConfig, args)
        return run_tokenize(cfg)


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.tokenize", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
