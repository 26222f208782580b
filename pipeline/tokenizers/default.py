"""The embedded default tokenizer: a small VAR multi-scale residual VQ-VAE trained on offline photos.

    tok = load_tokenizer("default")          # weights shipped in pipeline/assets, nothing downloaded

It is a `var-vqvae` tokenizer named "default" (same class, same state-dict layout, same tokens as
`load_tokenizer("var-vqvae", checkpoint=<asset>, config=<asset json>["config"])`), with the config
and preprocessing recorded beside the weights in `default_tokenizer.json`. How it was trained and
how to reproduce it: README "The embedded default tokenizer" (`make default-tokenizer`).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from pipeline.tokenizers.base import register_tokenizer
from pipeline.images import PreprocessConfig

WEIGHTS = "default_tokenizer.safetensors"
DESCRIPTION = "default_tokenizer.json"


def asset_path(name: str) -> str:
    path = resources.files("pipeline") / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(f"the embedded default tokenizer asset {name} is missing from the package "
                                f"({path}); reinstall scaletok or rebuild it (see default_tokenizer.json)")
    return str(path)


def description() -> dict[str, Any]:
    """The JSON shipped with the weights: family name, constructor config, preprocessing, training."""
    with open(asset_path(DESCRIPTION)) as f:
        return json.load(f)


@register_tokenizer("default")
def build_default(checkpoint: str | None = None, config: dict[str, Any] | None = None, *,
                  precision: str = "fp32", device: str = "cpu", preprocess: PreprocessConfig | None = None,
                  **options: Any):
    from pipeline.tokenizers.var_vqvae import build_var_vqvae

    desc = description()
    if desc.get("name") != "var-vqvae":
        raise ValueError(f"{DESCRIPTION} describes a {desc.get('name')!r} tokenizer; the default must be var-vqvae")
    cfg = {**desc["config"], **(config or {})}
    pre = preprocess or PreprocessConfig(**desc["preprocess"])
    tok = build_var_vqvae(checkpoint or asset_path(WEIGHTS), cfg, precision=precision, device=device,
                          preprocess=pre, **options)
    # Token files then name "default", which any consumer rebuilds from the package alone.
    tok.name = "default"
    return tok
