"""Safe checkpoint loading: safetensors, or .pth/.ckpt through `torch.load(weights_only=True)`.

A checkpoint is untrusted input. Pickled code is never executed; containers such as
{"state_dict": ...} / {"model": ...} are unwrapped; every key and shape is checked against the
model and a mismatch raises one error that lists what is missing, unexpected and mis-shaped.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Iterable, Mapping

import torch
from torch import nn

CONTAINER_KEYS = ("state_dict", "model", "module", "ema", "generator", "vae")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_state_dict(path: str | os.PathLike, *, prefer: Iterable[str] = CONTAINER_KEYS) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file as a flat {name: tensor} dict (float8 storage upcast to fp32)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            raw: Any = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"not a readable safetensors file: {path}: {exc}") from exc
    else:
        try:
            with warnings.catch_warnings():
                # torch warns about pickle protocols it may not read; the refusal below says it once.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's message advises weights_only=False; we never do that, so only the reason is kept.
            lines = [ln.strip() for ln in str(exc).splitlines()]
            reason = next((ln for ln in lines if "nsupported" in ln and "weights_only" not in ln), "unsupported content")
            raise CheckpointError(
                f"cannot load {path} safely: it is corrupt or holds pickled objects other than tensors and "
                f"plain containers (weights_only=True loader: {reason}); pickled code is never executed") from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"not a readable torch checkpoint: {path}: {exc}") from exc
    return _upcast(unwrap_state_dict(raw, prefer=tuple(prefer), source=path))


def unwrap_state_dict(obj: Any, prefer: tuple[str, ...] = CONTAINER_KEYS, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the {name: tensor} mapping inside common training-checkpoint containers."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in prefer if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            raise CheckpointError(f"{source}: no tensors found; top-level keys: {sorted(map(str, obj))[:20]}")
        obj = inner
    raise CheckpointError(f"{source}: containers nested too deeply")


def _upcast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Fixture files store large tensors as float8 to stay small; the models compute in fp32.
    out = {}
    for k, v in sd.items():
        if v.is_floating_point() and v.element_size() == 1:
            v = v.float()
        out[k] = v
    return out


def strip_prefix(sd: dict[str, torch.Tensor], prefixes: Iterable[str] = ("module.", "_orig_mod.")) -> dict[str, torch.Tensor]:
    """Remove DDP / torch.compile wrappers' key prefixes when every key has one."""
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def check_keys(model: nn.Module, sd: Mapping[str, torch.Tensor], *, ignore: Iterable[str] = (),
               source: str = "checkpoint") -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys (all at once)."""
    expected = model.state_dict()
    ignore = set(ignore)
    missing = sorted(set(expected) - set(sd) - ignore)
    unexpected = sorted(set(sd) - set(expected) - ignore)
    bad_shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or bad_shapes:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shapes)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        raise CheckpointError("\n".join(lines))


def load_into(model: nn.Module, path_or_sd: str | os.PathLike | Mapping[str, torch.Tensor], *,
              ignore: Iterable[str] = (), source: str | None = None) -> nn.Module:
    """Strictly load a checkpoint file (or a state dict read from `source`) into `model`,
    casting to its dtypes."""
    if source is None:
        source = os.fspath(path_or_sd) if not isinstance(path_or_sd, Mapping) else "state dict"
    sd = read_state_dict(path_or_sd) if not isinstance(path_or_sd, Mapping) else dict(path_or_sd)
    sd = strip_prefix(sd)
    check_keys(model, sd, ignore=ignore, source=source)
    expected = model.state_dict()
    sd = {k: v.to(expected[k].dtype) for k, v in sd.items() if k in expected}
    model.load_state_dict(sd, strict=not ignore)
    return model
