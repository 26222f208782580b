"""Rebuild the tokenizer that a stored record describes, and prove it is the same one.

Two records describe a tokenizer:
  - a token file's `scaletok.*` metadata (pipeline/sinks/schema.py): `tokenizer`, `tokenizer_config`,
    `preprocess`, `precision`, `fingerprint`;
  - a training checkpoint's `state.json["tokenizer"]` (pipeline/var/train.py): `name`, `config`,
    `options` ({preprocess, precision}), `checkpoint`, `fingerprint`.
The weights are never in a record (only, for checkpoints, the path they were read from), so the
rebuilt tokenizer must show the recorded fingerprint: otherwise decoded images or a VAR's
teacher-forcing input would silently use another codebook.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.tokenizers.base import Tokenizer, load_tokenizer


class TokenizerMismatch(ValueError):
    """The rebuilt tokenizer is not the one the record describes (other weights, config, ...)."""


def describe_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Either record shape -> {name, config, preprocess, precision, checkpoint, fingerprint}."""
    options = record.get("options") or {}
    return {
        "name": record.get("tokenizer") or record.get("name"),
        "config": record.get("tokenizer_config") if "tokenizer_config" in record else record.get("config"),
        "preprocess": record.get("preprocess", options.get("preprocess")),
        "precision": record.get("precision", options.get("precision")),
        "checkpoint": record.get("checkpoint"),
        "fingerprint": record.get("fingerprint"),
    }


def tokenizer_from_metadata(record: Mapping[str, Any], checkpoint: str | None = None, *,
                            name: str | None = None, config: Mapping[str, Any] | None = None,
                            device: Any = "cpu", check: bool = True) -> Tokenizer:
    """The tokenizer `record` describes, with the weights at `checkpoint` (default: the record's
    own path, if any). `name`/`config` override the record's (a user who knows better); the
    preprocessing and precision always come from the record because they are part of the
    fingerprint. With `check`, a fingerprint other than the recorded one raises TokenizerMismatch.
    """
    d = describe_record(record)
    name = name or d["name"]
    if not name:
        raise TokenizerMismatch("the record does not name its tokenizer; pass the tokenizer name")
    options: dict[str, Any] = {"device": device}
    if isinstance(d["preprocess"], dict):
        options["preprocess"] = d["preprocess"]
    if d["precision"]:
        options["precision"] = d["precision"]
    weights = checkpoint if checkpoint is not None else d["checkpoint"]
    tok = load_tokenizer(name, weights, dict(config or d["config"] or {}) or None, **options)
    recorded = d["fingerprint"]
    if check and recorded and tok.fingerprint() != recorded:
        raise TokenizerMismatch(
            f"the tokenizer rebuilt from the record ({name}, weights {weights or 'none: seeded random'}) has "
            f"fingerprint {tok.fingerprint()}, the record says {recorded}: different weights, config, "
            f"preprocessing or precision; pass the tokenizer weights that were used")
    return tok
