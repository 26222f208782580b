"""`scaletok verify OUT --input PATTERN`: recount each shard's rows against its input tar and
report missing, partial, stale, orphan and duplicate outputs (exit code 1 on any);
`--reencode FRACTION [--min-agreement X]`: the determinism audit (pipeline/runner/audit.py)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import job_main
from pipeline.config import parse_kv
from pipeline.errors import checking_inputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="the tokenize job's output directory or URL")
    parser.add_argument("--input", action="append", default=None,
                        help="the job's input shard patterns (repeatable); required unless only --reencode runs")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for remote input/output (repeatable)")
    parser.add_argument("--no-tars", action="store_true", help="skip recounting the input tars")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--reencode", type=float, default=None, metavar="FRACTION",
                        help="determinism audit: re-encode this seeded fraction of the committed ok rows with the "
                             "job's tokenizer on this machine and report, per scale, the share of identical tokens")
    parser.add_argument("--min-agreement", type=float, default=None, metavar="X",
                        help="with --reencode: exit 1 when any scale's share of identical tokens is below X (0..1)")
    parser.add_argument("--seed", type=int, default=0, help="with --reencode: which rows are sampled")


def run(args: argparse.Namespace) -> int:
    from pipeline.runner.verify import verify_output

    with checking_inputs():
        options = dict(parse_kv(v) for v in args.storage_option)
        if args.input is None and args.reencode is None:
            raise ValueError("give --input (the job's input patterns) to recount, and/or --reencode FRACTION")
        if args.min_agreement is not None and args.reencode is None:
            raise ValueError("--min-agreement needs --reencode")
        report = verify_output(args.output, args.input, options, check_tars=not args.no_tars) if args.input else None
        audit = _audit(args, options) if args.reencode is not None else None
    if args.json:
        print(json.dumps({**(report.to_dict() if report else {}), **({"reencode": audit.to_dict()} if audit else {})},
                         indent=1))
    else:
        print("\n".join(part.format() for part in (report, audit) if part is not None))
    failed = (report is not None and not report.clean) or (
        audit is not None and args.min_agreement is not None and audit.min_share < args.min_agreement)
    return 1 if failed else 0


def _audit(args: argparse.Namespace, options: dict):
    from pipeline.runner.audit import reencode_audit

    return reencode_audit(args.output, args.reencode, options, seed=args.seed, inputs=args.input)


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.verify", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
