"""`scaletok` command line: one subcommand per job module in `jobs/`.

Each job module exposes `add_arguments(parser)` and `run(args) -> int`, and is importable on its
own as `python -m jobs.<name>` (what `ray job submit` runs; its `main` is `job_main`). Modules are
imported only when their subcommand is chosen, so `scaletok --help` stays fast.

Errors, the same for every subcommand: one line on stderr, exit 2 for bad usage or input
(`pipeline.errors.UsageError`, argparse's own errors), exit 1 for a job that ran and failed;
`--debug` (before or after the subcommand) prints the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import types
from typing import Callable

from pipeline import __version__
from pipeline.errors import USAGE_EXIT, JobFailed, UsageError, exit_code, one_line

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-corpus": ("jobs.sample_corpus", "write the bundled sample corpus as WebDataset shards"),
    "demo": ("jobs.demo", "run the main job end to end on the bundled sample corpus"),
    "encode": ("jobs.encode", "encode images with a tokenizer and save per-scale reconstructions"),
    "tokenize": ("jobs.tokenize", "tokenize WebDataset shards into token Parquet on a Ray cluster"),
    "verify": ("jobs.verify", "recount a tokenize output against its input tars; non-zero on any problem"),
    "train": ("jobs.train_var", "train a VAR transformer on token Parquet with Ray Train (resumable)"),
    "sample": ("jobs.sample", "sample class-conditional images from a VAR checkpoint into a PNG grid"),
    "train-tokenizer": ("jobs.train_tokenizer", "train a tokenizer (var-vqvae, gq, gsq) on WebDataset shards with Ray Train"),
    "report": ("jobs.report", "write OUT/report.html: throughput, codebook usage, failures, reconstructions, training"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the flags are one --help away), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="scaletok",
        description="Tokenize image corpora once on a Ray cluster, train next-scale-prediction models on the tokens.")
    parser.add_argument("--version", action="version", version=f"scaletok {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, text) in COMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    argv = argv[1:] if debug else argv
    parser = build_parser()
    # Parse the command name first, then let the job module add its own flags.
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return USAGE_EXIT
    name = argv[0]
    module, sp = subcommand_parser(name)
    args = sp.parse_args(argv[1:])
    args.debug = args.debug or debug
    return run_job(sp.prog, module.run, args)


def subcommand_parser(name: str) -> tuple[types.ModuleType, argparse.ArgumentParser]:
    """The job module of subcommand `name` and its parser, with every flag the job adds."""
    module = importlib.import_module(COMMANDS[name][0])
    return module, job_parser(f"scaletok {name}", COMMANDS[name][1], module.add_arguments)


def job_parser(prog: str, description: str | None,
               add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=description)
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return parser


def run_job(prog: str, run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """`run(args)`'s exit code; an error becomes one stderr line and its kind's exit code."""
    debug = bool(getattr(args, "debug", False))
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the one place every job's errors are shown
        if debug:
            traceback.print_exc()
        print(error_line(prog, exc, debug), file=sys.stderr)
        return exit_code(exc)


def error_line(prog: str, exc: BaseException, debug: bool = False) -> str:
    if isinstance(exc, UsageError):
        return f"{prog}: error: {one_line(exc)}"
    if isinstance(exc, JobFailed):
        return f"{prog}: failed: {one_line(exc)}"
    # An unexpected failure: its type says what broke; the traceback is one flag away.
    hint = "" if debug else " (--debug shows the traceback)"
    return f"{prog}: failed: {type(exc).__name__}: {one_line(exc)}{hint}"


def job_main(prog: str, description: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int | None], argv: list[str] | None = None) -> int:
    """`python -m jobs.<name>`: the same flags, errors and exit codes as `scaletok <name>`."""
    parser = job_parser(prog, description, add_arguments)
    return run_job(prog, run, parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
