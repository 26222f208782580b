"""`scaletok` command line: one subcommand per job module in `jobs/`.

Each job module exposes `add_arguments(parser)` and `run(args) -> int`, and is importable on its
own as `python -m jobs.<name>` (what `ray job submit` runs). Modules are imported only when their
subcommand is chosen, so `scaletok --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline import __version__

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaletok",
        description="Tokenize image corpora once on a Ray cluster, train next-scale-prediction models on the tokens.")
    parser.add_argument("--version", action="version", version=f"scaletok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, text) in COMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let the job module add its own flags.
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sp = argparse.ArgumentParser(prog=f"scaletok {name}", description=COMMANDS[name][1])
    module.add_arguments(sp)
    args = sp.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
