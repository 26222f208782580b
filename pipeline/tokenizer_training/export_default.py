"""Ship a trained var-vqvae run as the embedded default tokenizer (pipeline/assets/default_tokenizer.*).

    python -m pipeline.tokenizer_training.export_default out/default-tokenizer/runs/default

Copies the run's final weights (or a given checkpoint directory's), measures the PSNR on the
held-out photos' crops at the demo resolution and writes the JSON the `default` loader reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.tokenizer_training.losses import psnr, ssim
from pipeline.tokenizer_training.photos import HELD_OUT_PHOTOS, TRAIN_PHOTOS, heldout_crops
from pipeline.tokenizers import load_tokenizer

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
HELDOUT = {"size": 64, "count": 32, "seed": 0}   # the demo resolution


@torch.no_grad()
def heldout_psnr(tok: Any, size: int = 64, count: int = 32, seed: int = 0) -> dict[str, float]:
    x = heldout_crops(size, count, seed)
    recon = torch.cat([tok.decode(tok.encode(x[i:i + 8])) for i in range(0, count, 8)])
    return {"psnr": round(float(psnr(recon, x).mean()), 3), "ssim": round(float(ssim(recon, x)), 4)}


def export(source: str, command: str, assets: str = ASSETS) -> dict[str, Any]:
    """Write `assets`/default_tokenizer.{safetensors,json} from the run in `source`; returns the JSON."""
    weights = os.path.join(source, "tokenizer.safetensors")
    if not os.path.exists(weights):
        weights = os.path.join(source, "model.safetensors")
    with open(os.path.join(source, "tokenizer.json")) as f:
        desc = json.load(f)
    if desc["name"] != "var-vqvae":
        raise ValueError(f"the default must be a var-vqvae tokenizer, {source} holds {desc['name']}")
    os.makedirs(assets, exist_ok=True)
    asset = os.path.join(assets, "default_tokenizer.safetensors")
    # fp16 storage halves the package size; the loader casts back to the model's fp32 and the
    # numbers below are measured on exactly these stored weights.
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(weights).items()}
    save_file(sd, asset, metadata={"format": "pt", "kind": "scaletok default tokenizer (var-vqvae)"})
    tok = load_tokenizer("var-vqvae", checkpoint=asset, config=desc["config"])
    measured = {f"{k}_{HELDOUT['size']}px": v for k, v in heldout_psnr(tok, **HELDOUT).items()}
    measured.update({f"{k}_128px": v for k, v in heldout_psnr(tok, 128, 16, 0).items()})
    out = {"name": "var-vqvae", "config": desc["config"], "preprocess": desc["preprocess"],
           "trained_steps": desc.get("step"), "train_config": _relative_paths(desc.get("train_config")),
           "train_command": command, "train_photos": [f"{p}:{n}" for p, n in TRAIN_PHOTOS],
           "heldout_photos": [f"{p}:{n}" for p, n in HELD_OUT_PHOTOS],
           "heldout_eval": {**HELDOUT, "crops": "pipeline.tokenizer_training.photos.heldout_crops"},
           "storage": "float16 (cast to float32 on load)", "measured": measured}
    with open(os.path.join(assets, "default_tokenizer.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def _relative_paths(value: Any) -> Any:
    """The recorded training config with this checkout's absolute paths made relative to it (the
    JSON ships in the package; paths of the machine it was made on mean nothing elsewhere)."""
    root = os.getcwd().rstrip(os.sep) + os.sep
    if isinstance(value, dict):
        return {k: _relative_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v) for v in value]
    if isinstance(value, str) and value.startswith(root):
        return value[len(root):]
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("source", help="a train-tokenizer run dir (tokenizer.safetensors) or one of its checkpoint dirs")
    p.add_argument("--command", default="out/default-tokenizer/command.sh", help="recorded reproduction command")
    p.add_argument("--assets", default=ASSETS, help="where default_tokenizer.* go (default: the package's assets)")
    args = p.parse_args(argv)
    print(json.dumps(export(args.source, args.command, args.assets)["measured"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
