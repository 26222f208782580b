"""Listing and planning a class-folder corpus of ImageNet's shape: is the listing the bottleneck?

Generates `--classes` x `--per-class` empty files (`train/n%08d/n%08d_%d.JPEG`, plus one stray
`.txt` per class) once under `--workdir`, then times, warm page cache:
  list   `pipeline.sources.folders.list_folder` (one os.walk, classes, extension filter, sort)
  plan   `folder_shards` (virtual shards of 1 000 with their digests)
and `os.walk` alone over the same tree as the floor. (On object stores the listing is paginated:
1 000 keys per LIST request, so 1 000 requests for ImageNet; see benchmarks/RESULTS.md §7.)

    python benchmarks/folder_listing.py                         # 1 000 x 1 000 = 1 000 000 files
    python benchmarks/folder_listing.py --per-class 100          # quick check

One JSON line goes to benchmarks/results/folder_listing.jsonl, with the conditions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions  # noqa: E402

from pipeline.sources.folders import folder_shards, list_folder  # noqa: E402


def make_tree(root: str, classes: int, per_class: int) -> int:
    """The tree (reused when it is there already); returns the number of files."""
    marker = os.path.join(root, f".complete-{classes}x{per_class}")
    if os.path.exists(marker):
        return classes * (per_class + 1)
    for c in range(classes):
        folder = os.path.join(root, f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            open(os.path.join(folder, f"n{c:08d}_{i}.JPEG"), "wb").close()
        open(os.path.join(folder, "notes.txt"), "wb").close()
    open(marker, "wb").close()
    return classes * (per_class + 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--images-per-shard", type=int, default=1000)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "scaletok-folder-bench"))
    p.add_argument("--json", default=str(RESULTS / "folder_listing.jsonl"))
    args = p.parse_args(argv)
    root = os.path.join(args.workdir, f"train-{args.classes}x{args.per_class}")
    t = time.perf_counter()
    files = make_tree(root, args.classes, args.per_class)
    generate_s = time.perf_counter() - t
    list_folder(root)  # warm the page cache (dentries) once, as a rerun of a job would find it
    t = time.perf_counter()
    walked = sum(len(names) for _, _, names in os.walk(root))
    walk_s = time.perf_counter() - t
    t = time.perf_counter()
    listing = list_folder(root)
    list_s = time.perf_counter() - t
    t = time.perf_counter()
    shards = folder_shards(listing, args.images_per_shard)
    plan_s = time.perf_counter() - t
    assert len(listing.images) == args.classes * args.per_class and walked >= files
    record = {"files": files, "images": len(listing.images), "classes": len(listing.classes),
              "ignored": listing.ignored, "shards": len(shards), "generate_s": round(generate_s, 2),
              "os_walk_s": round(walk_s, 3), "list_s": round(list_s, 3), "plan_s": round(plan_s, 3),
              "list_and_plan_s": round(list_s + plan_s, 3), "page_cache": "warm", **conditions()}
    append_jsonl(args.json, record)
    print(f"{files} files ({len(listing.images)} images, {len(listing.classes)} classes): os.walk {walk_s:.2f} s; "
          f"list_folder {list_s:.2f} s + {len(shards)} shards planned {plan_s:.2f} s = {list_s + plan_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
