"""NaFlex patch dictionaries: images of any size and aspect ratio as padded token sequences.

The layout is ViTok-v2's (Na-VAE/vitok-release `patchify` / `unpatchify` / `postprocess`), so a
dictionary built here is what its encoder expects:

  patches      (N, 3*p*p) float  p x p patches in raster order, each flattened channel-major
                                 (index = ch*p*p + ky*p + kx); rows past the image are zeros
  patch_mask   (N,) bool         True for the first grid_rows*grid_cols entries
  row_idx      (N,) int64        patch row of each token (padding tokens: 0)
  col_idx      (N,) int64        patch column of each token (padding tokens: 0)
  time_idx     (N,) int64        zeros (images are single frames)
  orig_height, orig_width        size of the content inside the grid (after any budget resize)
  grid_rows, grid_cols           patch grid of the image

A batch is the per-image dictionaries stacked (every image padded to the same N).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

PATCH_DICT_KEYS = ("patches", "patch_mask", "row_idx", "col_idx", "time_idx",
                   "orig_height", "orig_width", "grid_rows", "grid_cols")
FORMATS = ("minus_one_to_one", "zero_to_one", "0_255")


# ------------------------------------------------------------------------ token budget
def fit_to_token_budget(h: int, w: int, patch: int, max_tokens: int,
                        enforce: bool = False) -> tuple[int, int]:
    """Largest (h', w') <= (h, w) whose patch grid fits `max_tokens`, as the reference computes it.

    Both sides shrink by the same factor sqrt(budget / tokens) in patch units, floored (with a
    1e-5 guard against 15.999... from the square root). Known reference behaviour, kept for
    conformance: a side clamped up to one patch does not make the other side shrink more, so a
    very thin image can still exceed the budget (`patchify` then refuses it). `enforce=True`
    fixes that by shrinking the other side until the grid fits; it changes nothing else.
    """
    if h <= 0 or w <= 0 or patch <= 0 or max_tokens <= 0:
        raise ValueError(f"sizes, patch and max_tokens must be positive, got {(h, w, patch, max_tokens)}")
    rows, cols = math.ceil(h / patch), math.ceil(w / patch)
    if rows * cols <= max_tokens:
        return h, w
    scale = math.sqrt(max_tokens / (rows * cols))
    new_rows = max(1, math.floor(rows * scale + 1e-5))
    new_cols = max(1, math.floor(cols * scale + 1e-5))
    if enforce:
        new_cols = min(new_cols, max(1, max_tokens // new_rows))
        new_rows = min(new_rows, max(1, max_tokens // new_cols))
    return min(new_rows * patch, h), min(new_cols * patch, w)


def resize_to_token_budget(image: torch.Tensor, patch: int, max_tokens: int,
                           enforce: bool = False) -> torch.Tensor:
    """(3, H, W) float image -> resized to `fit_to_token_budget` (bicubic, antialiased, no clamp).

    This is torchvision's tensor `resize(..., BICUBIC, antialias=True)` on float input, which the
    reference applies after normalisation.
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    new_h, new_w = fit_to_token_budget(h, w, patch, max_tokens, enforce)
    if (new_h, new_w) == (h, w):
        return image
    # Bicubic with antialias needs float32 or float64; bf16 inputs go through float32.
    src = image if image.dtype in (torch.float32, torch.float64) else image.float()
    out = F.interpolate(src[None], size=(new_h, new_w), mode="bicubic", align_corners=False,
                        antialias=True)[0]
    return out.to(image.dtype)


# ------------------------------------------------------------------------ patchify
def grid_size(h: int, w: int, patch: int) -> tuple[int, int]:
    return math.ceil(h / patch), math.ceil(w / patch)


def patchify(image: torch.Tensor, patch: int, max_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """One (3, H, W) image (already in the model's range) -> a NaFlex patch dictionary.

    max_tokens: sequence length N to pad to; None pads to nothing (N = grid_rows * grid_cols).
    Never resizes: an image with more patches than `max_tokens` is an error (resize first with
    `resize_to_token_budget`).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"patchify expects a (3, H, W) image, got shape {tuple(image.shape)}")
    _, h, w = (int(s) for s in image.shape)
    rows, cols = grid_size(h, w, patch)
    n_valid = rows * cols
    n_total = n_valid if max_tokens is None else int(max_tokens)
    if n_valid > n_total:
        raise ValueError(f"a {h}x{w} image has {rows}x{cols}={n_valid} patches of {patch}px, more "
                         f"than max_tokens={n_total}; resize it to the token budget first")
    # Zero padding is mid-grey in [-1, 1]; the mask excludes nothing inside a partial patch.
    padded = F.pad(image, (0, cols * patch - w, 0, rows * patch - h), value=0.0)
    # (3, R, p, C, p) -> (R, C, 3, p, p): raster order over patches, channel-major inside one.
    valid = (padded.reshape(3, rows, patch, cols, patch).permute(1, 3, 0, 2, 4)
             .reshape(n_valid, 3 * patch * patch))
    patches = image.new_zeros(n_total, 3 * patch * patch)
    patches[:n_valid] = valid
    mask = torch.zeros(n_total, dtype=torch.bool, device=image.device)
    mask[:n_valid] = True
    row_idx = torch.zeros(n_total, dtype=torch.long, device=image.device)
    col_idx = torch.zeros(n_total, dtype=torch.long, device=image.device)
    row_idx[:n_valid] = torch.arange(rows, device=image.device).repeat_interleave(cols)
    col_idx[:n_valid] = torch.arange(cols, device=image.device).repeat(rows)
    scalar = lambda v: torch.tensor(v, dtype=torch.long, device=image.device)  # noqa: E731
    return {
        "patches": patches, "patch_mask": mask, "row_idx": row_idx, "col_idx": col_idx,
        "time_idx": torch.zeros(n_total, dtype=torch.long, device=image.device),
        "orig_height": scalar(h), "orig_width": scalar(w),
        "grid_rows": scalar(rows), "grid_cols": scalar(cols),
    }


def collate(dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-image dictionaries of equal N into a batch (the reference `patch_collate_fn`)."""
    if not dicts:
        raise ValueError("no patch dictionaries to collate")
    lengths = {int(d["patches"].shape[0]) for d in dicts}
    if len(lengths) > 1:
        raise ValueError(f"patch dictionaries have different lengths {sorted(lengths)}; "
                         "patchify them with the same max_tokens")
    return {k: torch.stack([d[k] for d in dicts]) for k in PATCH_DICT_KEYS}


def patchify_batch(images: Sequence[torch.Tensor], patch: int,
                   length: int | None = None) -> dict[str, torch.Tensor]:
    """Images of any sizes -> one batched dictionary, padded to `length` tokens (default: the
    longest image's). Resize to the token budget first; this never resizes."""
    counts = [math.prod(grid_size(int(im.shape[-2]), int(im.shape[-1]), patch)) for im in images]
    return collate([patchify(im, patch, max(counts) if length is None else length) for im in images])


# ------------------------------------------------------------------------ back to pixels
def unpatchify_one(patches: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor,
                   patch_mask: torch.Tensor, grid_rows: int, grid_cols: int, patch: int) -> torch.Tensor:
    """(N, 3p²) patches of one image -> (3, grid_rows*p, grid_cols*p), masked tokens dropped.

    Tokens are placed by their row/col indices (not by sequence position), like the reference's
    scatter, so any token order decodes correctly.
    """
    keep = patch_mask.bool()
    rows, cols = row_idx[keep].long(), col_idx[keep].long()
    if rows.numel() and (int(rows.max()) >= grid_rows or int(cols.max()) >= grid_cols):
        raise ValueError(f"token positions exceed the {grid_rows}x{grid_cols} grid")
    canvas = patches.new_zeros(grid_rows * grid_cols, patches.shape[-1])
    canvas[rows * grid_cols + cols] = patches[keep]
    return (canvas.reshape(grid_rows, grid_cols, 3, patch, patch).permute(2, 0, 3, 1, 4)
            .reshape(3, grid_rows * patch, grid_cols * patch))


def convert_format(images: torch.Tensor, current: str, target: str) -> torch.Tensor:
    """Pixel range conversion as the reference `postprocess` does it (clamps when converting)."""
    if current not in FORMATS or target not in FORMATS:
        raise ValueError(f"formats must be among {FORMATS}, got {current!r} -> {target!r}")
    if current == target:
        return images
    if target == "minus_one_to_one":
        x = images.float() / 127.5 - 1.0 if current == "0_255" else images * 2.0 - 1.0
        return x.clamp(-1.0, 1.0)
    if target == "zero_to_one":
        x = images.float() / 255.0 if current == "0_255" else (images + 1.0) / 2.0
        return x.clamp(0.0, 1.0)
    unit = (images.clamp(-1.0, 1.0) + 1.0) / 2.0 if current == "minus_one_to_one" else images.clamp(0.0, 1.0)
    return (unit * 255).round().to(torch.uint8)


def postprocess(batch: dict[str, torch.Tensor], patch: int, output_format: str = "minus_one_to_one",
                current_format: str = "minus_one_to_one") -> list[torch.Tensor]:
    """Batched dictionary with decoded `patches` -> list of (3, orig_height, orig_width) images."""
    out = []
    for i in range(int(batch["patches"].shape[0])):
        image = unpatchify_one(batch["patches"][i], batch["row_idx"][i], batch["col_idx"][i],
                               batch["patch_mask"][i], int(batch["grid_rows"][i]),
                               int(batch["grid_cols"][i]), patch)
        image = convert_format(image, current_format, output_format)
        out.append(image[:, :int(batch["orig_height"][i]), :int(batch["orig_width"][i])])
    return out
