"""Build a VAR from the reference constructor arguments and load (official) checkpoints strictly.

`config` holds the official `VAR(...)` constructor arguments (as in the fixture's
`var_small_config.json` "constructor"); anything not given follows `build_vae_var` for the
given `depth`. Vocabulary size and latent channels come from the tokenizer, as the reference
reads them from its VQVAE.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Sequence

import torch

from pipeline.io import filesystem_for
from pipeline.tokenizers.checkpoints import CheckpointError, check_keys, read_state_dict, strip_prefix
from pipeline.training.run_config import checkpoint_dirs
from pipeline.var.model import VAR, VARConfig

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(VARConfig)} - {"extra"}


def tokenizer_dims(tokenizer: Any) -> dict[str, Any]:
    """vocab_size, cvae (latent channels) and patch_nums of a residual (VAR-style) tokenizer."""
    quantize = getattr(getattr(tokenizer, "model", None), "quantize", None)
    embedding = getattr(quantize, "embedding", None)
    if embedding is not None:
        cvae = int(embedding.weight.shape[1])
    else:
        cfg = getattr(tokenizer, "config", {}) or {}
        if "z_channels" not in cfg:
            raise ValueError(f"cannot tell the latent channels of tokenizer {getattr(tokenizer, 'name', tokenizer)!r}")
        cvae = int(cfg["z_channels"])
    return {"vocab_size": int(tokenizer.vocab_size), "cvae": cvae,
            "patch_nums": tuple(int(p) for p in tokenizer.patch_nums)}


def var_config(config: Mapping[str, Any] | VARConfig | None = None, tokenizer: Any = None) -> VARConfig:
    """VARConfig from constructor arguments (+ the tokenizer's vocab/channels/scales)."""
    if isinstance(config, VARConfig):
        config = config.to_dict()
    config = dict(config or {})
    config.pop("vae_local", None)
    unknown = sorted(set(config) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"VAR: unknown config keys {unknown}; known keys: {sorted(_CONFIG_FIELDS)}")
    if tokenizer is not None:
        dims = tokenizer_dims(tokenizer)
        for key in ("vocab_size", "cvae"):
            given = config.get(key)
            if given is not None and given != dims[key]:
                raise ValueError(f"VAR config {key}={given!r} does not match the tokenizer's {dims[key]!r}")
            config[key] = dims[key]
        # The scale schedule is the token data's; the tokenizer's default applies when none is given.
        config.setdefault("patch_nums", dims["patch_nums"])
    return VARConfig(**config)


def infer_config(sd: Mapping[str, torch.Tensor], patch_nums: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Constructor arguments that a VAR state dict implies (depth, width, heads, classes, ...)."""
    try:
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        embed_dim = int(sd["pos_start"].shape[-1])
        out: dict[str, Any] = {
            "depth": depth, "embed_dim": embed_dim,
            "num_classes": int(sd["class_emb.weight"].shape[0]) - 1,
            "mlp_ratio": sd["blocks.0.ffn.fc1.weight"].shape[0] / embed_dim,
            "shared_aln": "shared_ada_lin.1.weight" in sd,
            "attn_l2_norm": "blocks.0.attn.scale_mul_1H11" in sd,
            "vocab_size": int(sd["head.weight"].shape[0]),
            "cvae": int(sd["word_embed.weight"].shape[1]),
        }
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"not a VAR state dict (missing {exc}); keys: {sorted(sd)[:10]}") from exc
    if out["attn_l2_norm"]:
        out["num_heads"] = int(sd["blocks.0.attn.scale_mul_1H11"].shape[1])
    seq_len = int(sd["pos_1LC"].shape[1])
    if patch_nums is not None and sum(p * p for p in patch_nums) == seq_len:
        out["patch_nums"] = tuple(patch_nums)
    elif seq_len == 680:
        out["patch_nums"] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    elif seq_len == 2240:
        out["patch_nums"] = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
    return out


def load_var(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None, *,
             config: Mapping[str, Any] | VARConfig | None = None, tokenizer: Any = None,
             device: str | torch.device = "cpu", seed: int = 0,
             init: Mapping[str, float] | None = None) -> VAR:
    """A VAR in eval mode: `checkpoint` (official .pth, our .safetensors, or a state dict) loaded
    strictly into the model `config` describes (inferred from the checkpoint when None).

    Without a checkpoint the weights follow the reference `init_weights(**init)` from `seed`.
    The tokenizer (if given) is kept as `model.tokenizer` for sampling.
    """
    sd = None
    if checkpoint is not None:
        sd = strip_prefix(read_state_dict(checkpoint) if not isinstance(checkpoint, Mapping) else dict(checkpoint))
        if config is None:
            inferred = infer_config(sd, tokenizer_dims(tokenizer)["patch_nums"] if tokenizer is not None else None)
            config = {k: v for k, v in inferred.items()
                      if tokenizer is None or k not in ("vocab_size", "cvae", "patch_nums")}
        elif tokenizer is None:
            # Without a tokenizer, the vocabulary and latent width come from the checkpoint.
            config = dict(config.to_dict() if isinstance(config, VARConfig) else config)
            config.setdefault("vocab_size", int(sd["head.weight"].shape[0]) if "head.weight" in sd else 4096)
            config.setdefault("cvae", int(sd["word_embed.weight"].shape[1]) if "word_embed.weight" in sd else 32)
    cfg = var_config(config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VAR(cfg)
        if sd is None:
            model.init_weights(**dict(init or {}))
    if sd is not None:
        source = os.fspath(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
        try:
            check_keys(model, sd, source=source)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}\n  {_shape_hint(sd, cfg)}") from None
        expected = model.state_dict()
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)
    model.tokenizer = tokenizer
    return model.to(device).eval()


def _shape_hint(sd: Mapping[str, torch.Tensor], cfg: VARConfig) -> str:
    try:
        got = infer_config(sd)
    except CheckpointError:
        return "the checkpoint does not look like a VAR state dict"
    want = {"depth": cfg.depth, "embed_dim": cfg.embed_dim, "num_classes": cfg.num_classes,
            "shared_aln": cfg.shared_aln, "vocab_size": cfg.vocab_size, "cvae": cfg.cvae,
            "seq_len": cfg.seq_len}
    got["seq_len"] = int(sd["pos_1LC"].shape[1]) if "pos_1LC" in sd else None
    diffs = [f"{k} {got.get(k)} (checkpoint) vs {v} (config)" for k, v in want.items() if got.get(k) != v]
    return ("hint: " + "; ".join(diffs)) if diffs else "hint: widths agree; compare the key lists above"


def load_trained(path: str, *, storage_options: Mapping[str, Any] | None = None,
                 tokenizer_checkpoint: str | None = None, device: str | torch.device = "cpu") -> VAR:
    """A VAR (with its tokenizer as `model.tokenizer`) from a training checkpoint directory, or from
    a run directory (its newest checkpoint); local or any fsspec URL.

    The tokenizer is rebuilt from the checkpoint's record (name, config, preprocessing) with the
    weights at `tokenizer_checkpoint` (default: the path recorded at training time) and must have
    the recorded fingerprint, so decoded images use the codebook the model was trained on.
    """
    import json
    import posixpath
    import tempfile

    from pipeline.tokenizers import TokenizerMismatch, tokenizer_from_metadata

    fs, root = filesystem_for(path, storage_options)
    if not fs.exists(posixpath.join(root, "state.json")):
        runs = checkpoint_dirs(fs, root)
        if not runs:
            raise CheckpointError(f"{path} is neither a training checkpoint (state.json) nor a run directory")
        root = runs[-1]
    state = json.loads(fs.cat_file(posixpath.join(root, "state.json")))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.safetensors")
        fs.get(posixpath.join(root, "model.safetensors"), local)
        sd = read_state_dict(local)
    try:
        tok = tokenizer_from_metadata(state["tokenizer"], tokenizer_checkpoint, device=device)
    except TokenizerMismatch as exc:
        raise CheckpointError(f"{root}: {exc}") from exc
    model = load_var(sd, config=state["var_config"], tokenizer=tok, device=device)
    model.class_names = state.get("class_names")  # the training data's class names (label i = names[i])
    return model


def resolve_classes(items: Sequence[str | int], num_classes: int, names: Sequence[str] | None = None) -> list[int]:
    """--classes entries (indices, or class names of the training data) -> class indices.
    `num_classes` itself is the unconditional (null) class."""
    index = {name: i for i, name in enumerate(names or [])}
    out = []
    for text in (part.strip() for item in items for part in str(item).split(",") if part.strip()):
        if text in index:
            out.append(index[text])
        elif text.lstrip("-").isdigit():
            out.append(int(text))
        else:
            known = (f"; known names: {', '.join(list(index)[:8])}{', ...' if len(index) > 8 else ''}" if index
                     else "; this model records no class names (train on class-folder or ClassLabel data)")
            raise ValueError(f"--classes {text!r} is neither a class index nor a class name{known}")
        if not 0 <= out[-1] <= num_classes:
            raise ValueError(f"--classes {text!r}: class {out[-1]} is outside 0..{num_classes - 1} "
                             f"({num_classes} = unconditional)")
    return out
