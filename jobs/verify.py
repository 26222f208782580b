"""`scaletok verify OUT --input PATTERN`: recount each shard's rows against its input tar and
report missing, partial, stale, orphan and duplicate outputs (exit code 1 on any)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import parse_kv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="the tokenize job's output directory or URL")
    parser.add_argument("--input", action="append", required=True,
                        help="the job's input shard patterns (repeatable)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for remote input/output (repeatable)")
    parser.add_argument("--no-tars", action="store_true", help="skip recounting the input tars")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from pipeline.sinks.verify import verify_output

    try:
        options = dict(parse_kv(v) for v in args.storage_option)
        report = verify_output(args.output, args.input, options, check_tars=not args.no_tars)
    except ValueError as e:
        print(f"scaletok verify: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0 if report.clean else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.verify", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
