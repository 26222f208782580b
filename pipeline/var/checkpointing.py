"""Training checkpoints: one directory per checkpoint, readable without pickled code.

    model.safetensors   the VAR state dict with the official key names (loadable by `load_var`)
    optimizer.pt        AdamW state: a dict of tensors and numbers (torch.load(weights_only=True))
    state.json          step, VAR constructor config, tokenizer identity, train config
    metrics.jsonl       every logged step so far (so a resumed run keeps one continuous log)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainState:
    step: int
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    history: list[dict[str, Any]]


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], history: list[dict[str, Any]]) -> None:
    os.makedirs(directory, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(directory, MODEL_FILE), metadata={"format": "pt", "kind": "VAR"})
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1, default=str)
    write_jsonl(os.path.join(directory, METRICS_FILE), history)


def load_checkpoint(directory: str) -> TrainState:
    with open(os.path.join(directory, STATE_FILE)) as f:
        state = json.load(f)
    model = load_file(os.path.join(directory, MODEL_FILE))
    opt_path = os.path.join(directory, OPTIMIZER_FILE)
    optimizer = torch.load(opt_path, map_location="cpu", weights_only=True) if os.path.exists(opt_path) else None
    return TrainState(step=int(state["step"]), state=state, model=model, optimizer=optimizer,
                      history=read_jsonl(os.path.join(directory, METRICS_FILE)))


def write_jsonl(path: str, rows: list[dict[str, Any]], fs: Any = None) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if fs is None:
        with open(path, "w") as f:
            f.write(text)
    else:
        fs.pipe_file(path, text.encode())


def read_jsonl(path: str, fs: Any = None) -> list[dict[str, Any]]:
    if fs is None:
        if not os.path.exists(path):
            return []
        with open(path) as f:
            text = f.read()
    else:
        if not fs.exists(path):
            return []
        text = fs.cat_file(path).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
