"""Side by side, alternated in one run: the reference's forward, our default forward and our
channels-last forward, on the same weights and the same real photos; img/s and whether the tokens
are identical. Called by `python benchmarks/encode.py --side-by-side` (see there for the flags).

Arms (each timed on the same batch, in rotating order every iteration so that machine noise and
cache warmth fall on every arm alike):
  reference      var-vqvae only: benchmarks/reference_vqvae.py, the official op order (NCHW)
  ours           `tok.encode`, the job's default (NCHW)
  channels-last  `tok.encode` after the job's `apply_speed_options` (NHWC weights and inputs)

Identity: every arm's tokens over every bundled photo (scikit-image, matplotlib, scikit-learn
when installed) at the run's size, and over a fixture's own inputs when the model entry names
one, compared with the baseline (reference where there is one, else ours). Continuous latents
(vitok) are compared bit for bit.
"""

from __future__ import annotations

import copy
import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from pipeline.runner.actor import apply_speed_options
from pipeline.tokenizer_training.photos import HELD_OUT_PHOTOS, TRAIN_PHOTOS, load_photo
from pipeline.tokenizers import load_tokenizer
from pipeline.images import PreprocessConfig

try:
    from reference_vqvae import img_to_idx  # run as a script from benchmarks/
except ImportError:  # imported as benchmarks.side_by_side
    from benchmarks.reference_vqvae import img_to_idx

Encode = Callable[[torch.Tensor], torch.Tensor]


def bundled_photos() -> list[np.ndarray]:
    return [im for im in (load_photo(*ref) for ref in TRAIN_PHOTOS + HELD_OUT_PHOTOS) if im is not None]


def flat_tokens(out: Any) -> torch.Tensor:
    """(B, N) of every grid flattened (codes or latents), for bitwise comparison."""
    return torch.cat([g.reshape(g.shape[0], -1).float() if g.is_floating_point() else g.reshape(g.shape[0], -1)
                      for g in out.grids], dim=1)


def make_arms(tok: Any, encode_kwargs: dict[str, Any]) -> dict[str, Encode]:
    """name -> function(x NCHW) -> (B, N) tokens, each with its own copy of the same weights."""
    arms: dict[str, Encode] = {}
    if tok.name in ("var-vqvae", "default"):
        pn = tuple(encode_kwargs.get("patch_nums") or tok.patch_nums)
        def reference(x: torch.Tensor) -> torch.Tensor:
            with tok.autocast():  # fp32: TF32 off, the same numerics setting as `tok.encode`
                return torch.cat(img_to_idx(tok.model, x, pn), dim=1)
        arms["reference"] = reference
    arms["ours"] = lambda x: flat_tokens(tok.encode(x, **encode_kwargs))
    fast = copy.deepcopy(tok)
    apply_speed_options(fast, SimpleNamespace(channels_last=True, compile=False))  # the job's own code path
    arms["channels-last"] = lambda x: flat_tokens(fast.encode(x.contiguous(memory_format=torch.channels_last),
                                                              **encode_kwargs))
    return arms


def photo_batches(tok: Any, size: int, batch: int, photos: list[np.ndarray]) -> list[torch.Tensor]:
    tok.preprocess_config = PreprocessConfig(**{**tok.preprocess_config.__dict__, "mode": "center-crop", "size": size})
    return [tok.preprocess(photos[i:i + batch]) for i in range(0, len(photos), batch)]


def differing(arm: Encode, base: Encode, batches: list[torch.Tensor]) -> tuple[int, int, int, int]:
    """(tokens that differ, tokens, images with any difference, images)."""
    diff = total = images_diff = images = 0
    for x in batches:
        a, b = arm(x), base(x)
        unequal = (a != b) if a.shape == b.shape else torch.ones(b.shape, dtype=torch.bool)
        diff += int(unequal.sum())
        total += b.numel()
        images_diff += int(unequal.any(dim=1).sum())
        images += b.shape[0]
    return diff, total, images_diff, images


def time_arms(arms: dict[str, Encode], x: torch.Tensor, iters: int, warmup: int) -> dict[str, list[float]]:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name](x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for it in range(iters):
        order = names[it % len(names):] + names[:it % len(names)]  # rotate who goes first
        for name in order:
            sync()
            t = time.perf_counter()
            arms[name](x)
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def run_entry(entry: dict[str, Any], size: int, batch: int, iters: int, warmup: int,
              photos: list[np.ndarray], check_identity: bool = True, device: str = "cpu") -> list[dict[str, Any]]:
    """One model: every arm timed on the first `batch` photos, identity over all of them."""
    options = dict(entry.get("options") or {})
    encode_kwargs = dict(entry.get("encode") or {})
    tok = load_tokenizer(entry["name"], entry.get("checkpoint"), config=entry.get("config"), device=device, **options)
    batches = [x.to(device) for x in photo_batches(tok, size, batch, photos)]
    x = batches[0]
    if x.shape[0] < batch:  # fewer photos than the batch: repeat them
        x = x.repeat((batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:batch]
    arms = make_arms(tok, encode_kwargs)
    baseline = "reference" if "reference" in arms else "ours"
    times = time_arms(arms, x, iters, warmup)
    fixture = None
    if entry.get("fixture_inputs"):
        fixture = torch.from_numpy(np.load(entry["fixture_inputs"]).astype(np.float32)).to(device)
    rows = []
    base_s = statistics.median(times[baseline])
    for name, ts in times.items():
        med = statistics.median(ts)
        row = {"model": entry.get("label", entry["name"]), "family": entry["name"], "size": size, "batch": batch,
               "arm": name, "baseline": baseline, "img_per_s": batch / med, "s_per_batch": med,
               "s_per_batch_all": ts, "speedup_vs_baseline": base_s / med, "threads": torch.get_num_threads()}
        if check_identity and name != baseline:
            d, n, di, ni = differing(arms[name], arms[baseline], batches)
            row["photos"] = {"tokens_differ": d, "tokens": n, "images_differ": di, "images": ni}
            if fixture is not None:
                d, n, di, ni = differing(arms[name], arms[baseline], [fixture])
                row["fixture"] = {"tokens_differ": d, "tokens": n, "images_differ": di, "images": ni,
                                  "inputs": entry["fixture_inputs"]}
        rows.append(row)
    return rows


def format_row(row: dict[str, Any]) -> str:
    def ident(key: str) -> str:
        r = row.get(key)
        if r is None:
            return "-"
        return "identical" if r["tokens_differ"] == 0 else \
            f"{r['tokens_differ']}/{r['tokens']} tok, {r['images_differ']}/{r['images']} img"
    return (f"{row['model']:<22} {row['size']:>4} {row['batch']:>5} {row['arm']:<14} {row['img_per_s']:>8.3f} "
            f"{row['speedup_vs_baseline']:>6.2f}x  photos: {ident('photos'):<24} fixture: {ident('fixture')}")
