"""Dataclass configs round-trip through YAML and CLI flags; every subcommand has a working --help."""

import argparse
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from pipeline import cli
from pipeline.config import add_dataclass_args, config_from_args, from_dict, load_config, parse_kv, save_config


@dataclass
class DemoConfig:
    inputs: list[str] = field(default_factory=list)
    output: str = "out"
    batch_size: int = 8
    lr: float = 1e-4
    overwrite: bool = False
    patch_nums: tuple[int, ...] = (1, 2, 4)
    storage_options: dict = field(default_factory=dict)
    note: str | None = None


def parse(argv):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, DemoConfig)
    return config_from_args(DemoConfig, p.parse_args(argv))


def test_flags_fill_typed_fields():
    cfg = parse(["--inputs", "a.tar", "--inputs", "b.tar", "--batch-size", "4", "--lr", "3e-4", "--overwrite",
                 "--patch-nums", "1,2,3", "--storage-options", "anon=true", "--storage-options", "key=k"])
    assert cfg.inputs == ["a.tar", "b.tar"] and cfg.batch_size == 4 and cfg.lr == 3e-4 and cfg.overwrite
    assert cfg.patch_nums == (1, 2, 3)
    assert cfg.storage_options == {"anon": True, "key": "k"}
    assert cfg.output == "out" and cfg.note is None


def test_save_reload_and_flags_override_file(tmp_path):
    cfg = parse(["--batch-size", "16", "--output", "x"])
    path = tmp_path / "job.yaml"
    save_config(cfg, path)
    assert load_config(DemoConfig, path) == cfg
    again = parse(["--config", str(path), "--output", "y"])
    assert again.batch_size == 16 and again.output == "y"


def test_unknown_keys_and_wrong_kind_are_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: DemoConfig\nbatch_sise: 3\n")
    with pytest.raises(ValueError, match="batch_sise"):
        load_config(DemoConfig, path)
    path.write_text("kind: TrainConfig\n")
    with pytest.raises(ValueError, match="TrainConfig"):
        load_config(DemoConfig, path)
    with pytest.raises(ValueError, match="not a boolean"):
        from_dict(DemoConfig, {"overwrite": "maybe"})


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert command in capsys.readouterr().out


def test_console_script_lists_commands():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True)
    for command in cli.COMMANDS:
        assert command in out.stdout
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_key_value_flags_keep_numeric_looking_strings():
    # YAML 1.1 would read these as octal / sexagesimal / hex integers: a secret like 0123 must
    # reach the storage backend as typed
    assert parse_kv("secret=0123") == ("secret", "0123")
    assert parse_kv("id=1:20") == ("id", "1:20")
    assert parse_kv("x=0x1f") == ("x", "0x1f")
    assert parse_kv("ch=32") == ("ch", 32) and parse_kv("n=-3") == ("n", -3) and parse_kv("z=0") == ("z", 0)
    assert parse_kv("lr=1.5") == ("lr", 1.5) and parse_kv("on=true") == ("on", True)
    assert parse_kv("client_kwargs={endpoint_url: http://h:9000}") == ("client_kwargs", {"endpoint_url": "http://h:9000"})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_kv("no-equals-sign")


def test_every_saved_config_masks_storage_secrets_and_keeps_the_live_ones(tmp_path):
    # One mechanism for all jobs: the tokenize job's config.yaml and the training jobs'
    # train_config.yaml / checkpoint records, never the options the workers use.
    import yaml

    from pipeline.config import recorded_dict, save_config
    from pipeline.runner.config import TokenizeConfig
    from pipeline.tokenizer_training.config import TokenizerTrainConfig
    from pipeline.var.train_config import TrainConfig

    opts = {"key": "AKIA", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://h:9000"}}
    for cfg in (TokenizeConfig(tokenizer="var-vqvae", storage_options=dict(opts)),
                TrainConfig(tokens="s3://b/t", storage_options=dict(opts)),
                TokenizerTrainConfig(storage_options=dict(opts))):
        path = tmp_path / f"{type(cfg).__name__}.yaml"
        save_config(cfg, path)
        saved = yaml.safe_load(path.read_text())
        assert saved["storage_options"] == {"key": "***", "secret": "***",
                                            "client_kwargs": {"endpoint_url": "http://h:9000"}}
        assert recorded_dict(cfg)["storage_options"] == saved["storage_options"]
        assert cfg.storage_options == opts  # the live config still reaches the storage
        assert "s3cr3t" not in path.read_text()


def test_saved_job_config_masks_secrets_at_any_depth():
    from pipeline.config import redact_secrets

    opts = {"key": "AKIA", "anon": False, "client_kwargs": {"endpoint_url": "http://h", "aws_secret_access_key": "s",
                                                            "aws_session_token": "t"},
            "config_kwargs": [{"password": "p"}]}
    masked = redact_secrets(opts)
    assert masked == {"key": "***", "anon": False,
                      "client_kwargs": {"endpoint_url": "http://h", "aws_secret_access_key": "***",
                                        "aws_session_token": "***"},
                      "config_kwargs": [{"password": "***"}]}
    assert opts["client_kwargs"]["aws_secret_access_key"] == "s"  # the job's own options are untouched
