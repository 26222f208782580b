"""Dataclass configs: one per job, saved next to every output, reloadable, mirrored by CLI flags.

`add_dataclass_args` turns a config dataclass into argparse flags (one per field, `--field-name`),
`config_from_args` builds the dataclass back from parsed flags layered over an optional YAML/JSON
file given with `--config`, and `save_config` / `load_config` round-trip through YAML.
Precedence: dataclass defaults < config file < flags given on the command line.

What is written down (`save_config`, `recorded_dict`) never holds credentials: every key inside a
config's `storage_options` that looks like a secret is masked as "***", at any depth (s3fs takes
keys at the top and inside client_kwargs / config_kwargs). A reloaded config then needs its
secrets from the environment or the command line again, which is where they belong.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import typing
from typing import Any, TypeVar

import yaml

from pipeline.secrets import SecretOptions, redact_secrets, redact_urls  # noqa: F401 (redact_secrets: re-export)

T = TypeVar("T")
def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def recorded_dict(cfg: Any) -> dict[str, Any]:
    """`to_dict(cfg)` for writing down (config files, checkpoints, exports): storage-option
    secrets masked and URL passwords / signed-URL query strings masked in every field
    (pipeline/secrets.py). The live config, which workers need to reach the storage, is untouched."""
    data = to_dict(cfg)
    return {k: (redact_secrets(v) if k == "storage_options" else redact_urls(v)) for k, v in data.items()}


RAY_SECRET_KEY = "__storage_options_ref__"


def to_ray_dict(cfg: Any) -> dict[str, Any]:
    """`to_dict(cfg)` to hand to Ray (a Train loop config, task arguments): storage options are
    replaced by a reference into Ray's object store, so Ray's state (task specs, the Train
    controller, the dashboard) never holds them in clear. `config_from_ray` undoes it."""
    data = to_dict(cfg)
    if data.get("storage_options"):
        data[RAY_SECRET_KEY] = SecretOptions.put(getattr(cfg, "storage_options"))
        data["storage_options"] = {}
    return data


def config_from_ray(cls: type[T], data: dict[str, Any]) -> T:
    """In a Ray worker: the config of `to_ray_dict`, with its storage options back."""
    data = dict(data)
    secret = data.pop(RAY_SECRET_KEY, None)
    if secret is not None:
        data["storage_options"] = secret.resolve()
    return from_dict(cls, data)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from a dict, rejecting unknown keys by name (typos must not pass silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**kwargs)


def save_config(cfg: Any, path: str | os.PathLike, fs: Any = None) -> None:
    text = yaml.safe_dump({"kind": type(cfg).__name__, **recorded_dict(cfg)}, sort_keys=False)
    if fs is None:
        with open(path, "w") as f:
            f.write(text)
    else:
        fs.pipe_file(str(path), text.encode())


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, found {type(data).__name__}")
    kind = data.pop("kind", cls.__name__)
    if kind != cls.__name__:
        raise ValueError(f"{path} holds a {kind} config, expected {cls.__name__}")
    return from_dict(cls, data)


def field_help(f: dataclasses.Field) -> str:
    """A config field's help text, kept beside its default as `field(metadata={"help": ...})`."""
    return str(f.metadata.get("help", ""))


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, positional: tuple[str, ...] = ()) -> None:
    """One flag per field, its help from the field's metadata. Defaults are left unset (None) so
    that a config file can fill them; the help shows the dataclass default."""
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", help="YAML/JSON config file; flags given here override it")
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        text = field_help(f)
        text = f"{text} (default: {default})".strip() if default not in (None, "", [], {}) else text
        text = text.replace("%", "%%")  # argparse %-formats help: a literal "%" must not break --help
        if f.name in positional:
            parser.add_argument(f.name, nargs="+" if _is_list(tp) else None, help=text)
            continue
        flag = "--" + f.name.replace("_", "-")
        base = _strip_optional(tp)
        if base is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif _is_list(tp):
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=text + " (repeatable)")
        elif base in (dict, typing.Dict) or typing.get_origin(base) is dict:
            parser.add_argument(flag, dest=f.name, action="append", default=None, metavar="KEY=VALUE",
                                help=text + " (repeatable KEY=VALUE)")
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = args.config
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        loaded.pop("kind", None)
        data.update(loaded)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        base = _strip_optional(hints[f.name])
        if (base is dict or typing.get_origin(base) is dict) and isinstance(value, list):
            value = dict(parse_kv(v) for v in value)
        data[f.name] = value
    return from_dict(cls, data)


_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")


def parse_kv(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError(f"expected KEY=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    parsed = yaml.safe_load(value)
    # YAML 1.1 reads "0123" as octal 83 and "1:20" as 80: a secret or an id that merely looks
    # numeric must arrive as typed. Only plain decimal integers become ints.
    if isinstance(parsed, int) and not isinstance(parsed, bool) and not _PLAIN_INT.fullmatch(value.strip()):
        return key, value
    return key, parsed


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_list(tp: Any) -> bool:
    base = _strip_optional(tp)
    return typing.get_origin(base) in (list, tuple) or base in (list, tuple)


def _coerce(tp: Any, value: Any) -> Any:
    """Turn strings from flags into the field's type (int, float, bool, lists of them)."""
    if value is None:
        return None
    base = _strip_optional(tp)
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(base) or (str,)
        items = value if isinstance(value, (list, tuple)) else [value]
        flat: list[Any] = []
        for item in items:  # "1,2,3" and repeated flags both work
            if isinstance(item, str) and inner is not str and "," in item:
                flat.extend(s for s in item.split(",") if s)
            else:
                flat.append(item)
        coerced = [_coerce(inner, v) for v in flat]
        return tuple(coerced) if origin is tuple else coerced
    if base is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if base in (int, float) and isinstance(value, str):
        return base(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
