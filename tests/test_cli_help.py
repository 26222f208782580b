"""Help lives with the config: every flag of every subcommand has --help text, and the text of a
config-backed flag is the one written beside the field's default (`field(metadata={"help": ...})`)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from pipeline import cli
from pipeline.config import add_dataclass_args


def flags_without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] if a.option_strings else a.dest
            for a in parser._actions if not (a.help or "").strip() or a.help == argparse.SUPPRESS]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_flag_of_every_subcommand_has_help(command):
    _, parser = cli.subcommand_parser(command)
    assert len(parser._actions) > 1  # the job added its flags
    assert flags_without_help(parser) == []
    parser.format_help()  # a stray "%" in a help text would raise here


def config_classes():
    from jobs.sample import SampleConfig
    from pipeline.runner.config import TokenizeConfig
    from pipeline.tokenizer_training.config import TokenizerTrainConfig
    from pipeline.var.train_config import TrainConfig

    return [TokenizeConfig, TrainConfig, SampleConfig, TokenizerTrainConfig]


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_job_config_field_carries_its_help(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not str(f.metadata.get("help", "")).strip()]
    assert missing == []


def test_flag_help_is_the_field_metadata_with_the_default():
    @dataclass
    class Knobs:
        rate: float = field(default=0.5, metadata={"help": "fraction kept, 50% by default"})
        name: str = field(default="", metadata={"help": "what to call it"})
        bare: int = 3

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Knobs)
    by_dest = {a.dest: a for a in parser._actions}
    text = " ".join(parser.format_help().split())
    assert "fraction kept, 50% by default (default: 0.5)" in text
    assert by_dest["name"].help == "what to call it"  # no "(default: )" for an empty default
    assert by_dest["bare"].help == "(default: 3)"


def test_tokenize_help_explains_the_speed_flags():
    _, parser = cli.subcommand_parser("tokenize")
    text = " ".join(parser.format_help().split())
    for flag in ("--shards-per-actor", "--jpeg-draft", "--channels-last", "--compile"):
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert len(action.help) > 30, (flag, action.help)
    assert "80% of GPU memory" in text
