"""`scaletok report OUT [--run RUN_DIR]` / `python -m jobs.report`: one self-contained HTML page
about a tokenize output (throughput per actor, codebook usage and perplexity per scale, failures
by kind, input vs reconstruction at each scale) and, with --run, a training run (loss/accuracy
curves, samples). Writes OUT/report.html and OUT/report/*.png.

A committed data file whose bytes differ from its manifest fails the report (exit 1, one line
naming the file): a report over changed tokens would show numbers nobody encoded.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from pipeline.cli import job_main
from pipeline.errors import JobFailed, checking_inputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the tokenize job's output directory or URL")
    parser.add_argument("--run", default=None, help="a training run directory (`scaletok train` writes <storage-path>/<name>)")
    parser.add_argument("--reconstructions", type=int, default=4,
                        help="samples in the input-vs-reconstruction grid (0: skip; default 4)")
    parser.add_argument("--checkpoint", default=None,
                        help="tokenizer weights for decoding (default: the checkpoint in OUT/config.yaml)")
    parser.add_argument("--samples", type=int, default=8,
                        help="images sampled from the run's newest checkpoint (0: skip; default 8)")
    parser.add_argument("--storage-options", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for remote OUT/run/inputs, e.g. endpoint_url=http://... (repeatable)")


def parse_storage_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--storage-options expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key] = yaml.safe_load(value)
    return options


def run(args: argparse.Namespace) -> int:
    from pipeline.report import build_report
    from pipeline.sinks.integrity import DamagedDataError

    with checking_inputs():
        try:
            path = build_report(args.out, run_dir=args.run, reconstructions=args.reconstructions,
                                checkpoint=args.checkpoint, sample_images=args.samples,
                                storage_options=parse_storage_options(args.storage_options))
        except DamagedDataError as e:  # a ValueError, but not the user's input to fix (exit 1)
            raise JobFailed(str(e)) from e
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.report", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
