"""Which token rows every training step uses: a pure function of (seed, epoch, rank), never of
scheduling, so runs repeat step for step and a resumed run picks up the exact batches.

Units. An *image* is one sample of the tokenize job with at least one ok row; its rows are its
stored variants, adjacent in the file ("orig", flips, "crop0", "crop0+hflip", ...). By default an
epoch uses **one row of each image** (VAR's recipe: every image once per epoch, a fresh random
crop each time): among the image's random-crop rows when it has any (the centre crop is the
evaluation transform), else among all its ok rows. With `all_variants` every ok row is its own
sample.

Shares. The images, numbered in file order, are cut into `world` contiguous ranges of equal size
(+-1); rank r loads only the files its range touches, once. Every epoch, rank r walks its own
images in a seeded permuted order, `per_rank_batch` rows per step; an epoch has the same number of
steps on every rank (the smallest share's full batches), so every rank gives DDP the same number of
rows per step and never waits on a rank that ran out. The global batch of a step is the union of
the ranks' batches (a stratified sample of the corpus).

Position. Step s is batch s % steps_per_epoch of epoch s // steps_per_epoch; the checkpoint's step
is therefore the whole data position. Permutations and variant choices come from PCG64's raw
64-bit stream (whose values numpy keeps stable across versions), sorted, not from `permutation`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from pipeline.sinks.schema import ORIGINAL_VARIANT, is_crop_variant


@dataclass(frozen=True)
class Segment:
    """Images [first, end) of file `file` (indices into the file's usable images)."""

    file: int
    first: int
    end: int


@dataclass(frozen=True)
class DataPlan:
    """Everything that fixes the data order of a run (recorded in every checkpoint)."""

    seed: int
    world: int
    per_rank_batch: int
    all_variants: bool
    steps_per_epoch: int
    digest: str               # of the files and their per-image row counts: the token set

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of 0-based step `step`."""
        return divmod(int(step), self.steps_per_epoch)

    def record(self, step: int) -> dict:
        epoch, batch = self.position(step)
        return {**asdict(self), "epoch": epoch, "batch_in_epoch": batch}


# ------------------------------------------------------------------------------- images of a file
def image_rows(status: Sequence[str], variant: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """A file's status/variant columns -> (image index of every row (-1: not usable), ok rows per
    usable image). A sample's rows start at its "orig" row (files without variants: every row)."""
    ok = np.asarray(status, dtype=object) == "ok"
    if variant is None:
        sample = np.arange(len(ok))
    else:
        sample = np.cumsum(np.asarray(variant, dtype=object) == ORIGINAL_VARIANT) - 1
    usable_samples, counts = np.unique(sample[ok], return_counts=True)
    image = np.full(len(ok), -1, dtype=np.int64)
    image[ok] = np.searchsorted(usable_samples, sample[ok])
    return image, counts.astype(np.int64)


def candidate_ranges(image: np.ndarray, variants: Sequence[str] | None, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Per usable image, (first row, number of rows) it may contribute in one-per-epoch mode, in
    the numbering of the rows with image >= 0: its crop rows (adjacent, at the end of its rows)
    when it has any, else all its rows."""
    keep = image >= 0
    img = image[keep]
    starts = np.searchsorted(img, np.arange(n_images))
    counts = np.bincount(img, minlength=n_images)
    if variants is None:
        return starts, counts
    crop = np.array([is_crop_variant(v) for v in np.asarray(variants, dtype=object)[keep]], dtype=bool)
    crop_counts = np.bincount(img[crop], minlength=n_images)
    has_crops = crop_counts > 0
    return np.where(has_crops, starts + counts - crop_counts, starts), np.where(has_crops, crop_counts, counts)


# ------------------------------------------------------------------------------------------ shares
def split_images(images_per_file: Sequence[int], world: int) -> list[list[Segment]]:
    """Rank r's share: images [r*M//world, (r+1)*M//world) of the M usable images in file order,
    as per-file segments."""
    bounds = np.cumsum([0, *images_per_file])
    total = int(bounds[-1])
    shares = []
    for r in range(world):
        lo, hi = r * total // world, (r + 1) * total // world
        share = []
        for f, n in enumerate(images_per_file):
            first, end = max(lo, int(bounds[f])), min(hi, int(bounds[f + 1]))
            if first < end:
                share.append(Segment(f, first - int(bounds[f]), end - int(bounds[f])))
        shares.append(share)
    return shares


def share_items(share: Sequence[Segment], rows_per_image: Sequence[np.ndarray], all_variants: bool) -> int:
    """Samples rank's share offers per epoch: its images, or with `all_variants` their ok rows."""
    if not all_variants:
        return sum(s.end - s.first for s in share)
    return int(sum(int(rows_per_image[s.file][s.first:s.end].sum()) for s in share))


def make_plan(files: Sequence[str], rows_per_image: Sequence[np.ndarray], *, seed: int, world: int,
              per_rank_batch: int, all_variants: bool) -> DataPlan:
    """The plan of a run over these files (rows_per_image[f]: ok rows of each usable image of f)."""
    shares = split_images([len(r) for r in rows_per_image], world)
    items = [share_items(s, rows_per_image, all_variants) for s in shares]
    h = hashlib.sha256(json.dumps([str(f) for f in files]).encode())
    for r in rows_per_image:
        h.update(np.asarray(r, dtype=np.int64).tobytes())
    return DataPlan(seed=int(seed), world=int(world), per_rank_batch=int(per_rank_batch),
                    all_variants=bool(all_variants), steps_per_epoch=min(items) // per_rank_batch,
                    digest=h.hexdigest()[:16])


# ------------------------------------------------------------------------------------ epoch order
def raw_draws(seed: int, epoch: int, rank: int, purpose: int, n: int) -> np.ndarray:
    """n uint64 values of PCG64 seeded with (seed, epoch, rank, purpose)."""
    words = [int(v) % 2 ** 63 for v in (seed, epoch, rank, purpose)]  # SeedSequence takes non-negative ints
    return np.random.PCG64(words).random_raw(n).astype(np.uint64)


def epoch_rows(plan: DataPlan, epoch: int, rank: int, cand_start: np.ndarray, cand_count: np.ndarray,
               n_rows: int) -> np.ndarray:
    """The rows (indices into the rank's loaded ok rows) of every batch of epoch `epoch`, in order:
    steps_per_epoch * per_rank_batch of them; the rest of the epoch's samples are left out."""
    if plan.all_variants:
        order = np.argsort(raw_draws(plan.seed, epoch, rank, 0, n_rows), kind="stable")
    else:
        images = np.argsort(raw_draws(plan.seed, epoch, rank, 0, len(cand_start)), kind="stable")
        pick = raw_draws(plan.seed, epoch, rank, 1, len(cand_start))[images] % cand_count[images].astype(np.uint64)
        order = cand_start[images] + pick.astype(np.int64)
    return order[: plan.steps_per_epoch * plan.per_rank_batch]
