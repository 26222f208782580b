"""Class-folder trees with symlink loops, links between folders, FIFOs, sockets, directories named
like images and dangling links: each directory is listed once, planning ends, nothing that is not
a regular file is ever read (no shard hangs), and read errors are the same text on every run."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.runner.job import run_tokenize
from pipeline.sources import folders
from pipeline.sources.decode import decode_sample
from pipeline.sources.folders import folder_shards, iter_folder_samples, list_folder
from tests.job.conftest import tiny_config  # also puts the repository on the Ray workers' PYTHONPATH


class Hung(Exception):
    """Not TimeoutError: that is an OSError, which the reader would turn into a row."""


@contextmanager
def within(seconds: int):
    """Fail (instead of hanging the suite) when the body blocks, e.g. on open() of a FIFO."""
    def expired(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def image(path: Path, shade: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 255 - shade, (shade * 7) % 256)).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())


def base_tree(root: Path) -> dict[str, str]:
    """cat/ and dog/ with 3 real images; returns {relative path: class}."""
    image(root / "cat" / "a.png", 10)
    image(root / "cat" / "b.jpg", 60, "JPEG")
    image(root / "dog" / "c.png", 200)
    return {"cat/a.png": "cat", "cat/b.jpg": "cat", "dog/c.png": "dog"}


def labelled(listing) -> dict[str, str]:
    shard, = folder_shards(listing, images_per_shard=10_000)
    return {rel: listing.classes[label] for rel, label in zip(shard.files, shard.labels)}


def test_a_loop_to_an_ancestor_adds_nothing(tmp_path):
    real = base_tree(tmp_path)
    os.symlink("..", tmp_path / "cat" / "loop")
    with within(10):
        listing = list_folder(str(tmp_path))
    assert listing.classes == ["cat", "dog"]
    assert labelled(listing) == real
    assert listing.ignored == 1 and listing.ignored_examples == ["cat/loop"]


def test_two_loops_and_a_link_farm_terminate(tmp_path):
    root = tmp_path / "train"
    real = base_tree(root)
    os.symlink("..", root / "cat" / "loop")
    os.symlink("..", root / "dog" / "up")
    # Every level links to every ancestor and to the next level: os.walk(followlinks=True) would
    # go exponential here. Images at each level are listed once, under their real path.
    level = root / "dog" / "deep"
    for depth in range(12):
        image(level / f"i{depth}.png", depth * 20)
        real[str(level.relative_to(root) / f"i{depth}.png")] = "dog"
        for up in range(1, depth + 3):  # up to DIR itself, never above it
            os.symlink("/".join([".."] * up), level / f"up{up}")
        os.symlink(f"n{depth + 1}", level / f"a_next{depth}")  # a link to the next level, sorts first
        level = level / f"n{depth + 1}"
    level.mkdir()
    with within(20):
        listing = list_folder(str(root))
    assert labelled(listing) == real
    assert len(listing.images) == len(real)
    # every link (2 loops, then per level its ups and its a_next) is skipped and counted
    assert listing.ignored == 2 + sum(depth + 3 for depth in range(12)) and listing.ignored_examples[0] == "cat/loop"


def test_a_link_to_a_sibling_class_keeps_its_images_there(tmp_path):
    real = base_tree(tmp_path)
    os.symlink("../dog", tmp_path / "cat" / "alias")   # "cat/alias" sorts before "dog"
    os.symlink("dog", tmp_path / "aardvark")          # a class that is a link: still a class
    with within(10):
        listing = list_folder(str(tmp_path))
    assert listing.classes == ["aardvark", "cat", "dog"]  # aardvark keeps its index, empty
    assert labelled(listing) == real                      # dog's image once, labelled dog
    assert set(listing.ignored_examples) == {"aardvark", "cat/alias"}


def test_links_to_folders_outside_are_followed_once(tmp_path):
    outside = tmp_path / "outside"
    image(outside / "o.png", 90)
    image(outside / "sub" / "s.png", 120)
    root = tmp_path / "train"
    real = base_tree(root)
    os.symlink(outside, root / "bird")                      # a class folder that is a link
    os.symlink(outside, root / "cat" / "more")              # the same folder again
    os.symlink(outside / "sub", root / "dog" / "sub_link")  # its subfolder again
    with within(10):
        listing = list_folder(str(root))
    assert listing.classes == ["bird", "cat", "dog"]
    assert labelled(listing) == {**real, "bird/o.png": "bird", "bird/sub/s.png": "bird"}
    assert {"cat/more", "dog/sub_link"} <= set(listing.ignored_examples)
    assert folder_shards(list_folder(str(root)), 2) == folder_shards(listing, 2)  # deterministic


def test_fifo_socket_directory_and_dangling_link(tmp_path, monkeypatch):
    root = tmp_path / "train"
    base_tree(root)
    cat = root / "cat"
    os.mkfifo(cat / "pipe.jpg")
    image(cat / "d.jpg" / "inner.png", 30)  # a directory named like an image is a directory
    os.symlink("nowhere.jpg", cat / "gone.jpg")
    os.symlink("nowhere.txt", cat / "gone.txt")
    os.symlink("self.jpg", cat / "self.jpg")  # a link loop: stat fails with ELOOP
    monkeypatch.chdir(cat)  # a short relative path: AF_UNIX paths are limited to ~100 bytes
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.png")
    try:
        with within(10):
            listing = list_folder(str(root))
            shard, = folder_shards(listing, images_per_shard=100)
            rows = {s.key: s for s in iter_folder_samples(shard, None, 1 << 20)}
    finally:
        sock.close()
    assert listing.images == ["cat/a.png", "cat/b.jpg", "cat/d.jpg/inner.png", "cat/gone.jpg", "cat/pipe.jpg",
                              "cat/self.jpg", "cat/sock.png", "dog/c.png"]
    assert "cat/gone.txt" in listing.ignored_examples
    errors = {k: r.error for k, r in rows.items() if r.status == "read_error"}
    assert errors == {"cat/pipe": "not a regular file (FIFO): cat/pipe.jpg",
                      "cat/sock": "not a regular file (socket): cat/sock.png",
                      "cat/gone": "FileNotFoundError: No such file or directory: cat/gone.jpg",
                      "cat/self": "OSError: Too many levels of symbolic links: cat/self.jpg"}
    decoded = [decode_sample(r) for k, r in rows.items() if k not in errors]
    assert all(d.ok for d in decoded) and [d.label for d in decoded] == [0, 0, 0, 1]


def test_files_that_change_after_the_listing(tmp_path, monkeypatch):
    """A file swapped for a FIFO or a directory after planning is not read; a FIFO that even the
    stat check misses (swapped in between) is opened non-blocking and refused on its descriptor."""
    root = tmp_path / "train"
    base_tree(root)
    image(root / "cat" / "c.png", 40)
    image(root / "cat" / "d.png", 50)
    shard, = folder_shards(list_folder(str(root)), images_per_shard=100)
    os.unlink(root / "cat" / "a.png")
    os.mkfifo(root / "cat" / "a.png")
    os.unlink(root / "cat" / "b.jpg")
    (root / "cat" / "b.jpg").mkdir()
    os.unlink(root / "cat" / "c.png")
    os.mkfifo(root / "cat" / "c.png")
    os.chmod(root / "cat" / "d.png", 0)
    regular = os.stat(root / "dog" / "c.png")
    real_stat = os.stat

    def stat_missing_the_swap(path, *a, **kw):  # the check ran before the swap to a FIFO
        return regular if str(path).endswith("cat/c.png") else real_stat(path, *a, **kw)

    monkeypatch.setattr(folders.os, "stat", stat_missing_the_swap)
    with within(10):
        rows = list(iter_folder_samples(shard, None, 1 << 20))
    monkeypatch.undo()
    unreadable = "PermissionError: Permission denied: cat/d.png" if os.geteuid() else None  # root reads anyway
    assert [(r.key, r.error) for r in rows] == [
        ("cat/a", "not a regular file (FIFO): cat/a.png"), ("cat/b", "not a regular file (directory): cat/b.jpg"),
        ("cat/c", "not a regular file (FIFO): cat/c.png"), ("cat/d", unreadable), ("dog/c", None)]
    assert all(str(tmp_path) not in (r.error or "") for r in rows)


def rows_of(out: Path) -> dict[str, dict]:
    return {row["key"]: row for path in sorted((out / "tokens").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()}


def test_the_job_on_a_tree_with_a_loop_and_a_fifo(ray_cluster, tmp_path):
    """End to end: the FIFO is one bad row (a read_error, like a vanished file: the shard commits
    and the job exits 0), the loop adds nothing, and two runs on two copies of the tree at
    different paths write byte-identical token files, error texts included."""
    trees = []
    for copy in ("one", "two"):
        root = tmp_path / copy / "train"
        real = base_tree(root)
        image(root / "dog" / "e.png", 150)
        real["dog/e.png"] = "dog"
        os.symlink("..", root / "cat" / "loop")
        os.mkfifo(root / "cat" / "pipe.jpg")
        trees.append(root)
    outs = []
    for root in trees:
        out = root.parent / "out"
        with within(300):
            assert run_tokenize(tiny_config([str(root)], out, num_actors=1, images_per_shard=2)) == 0
        outs.append(out)
    rows = rows_of(outs[0])
    classes = json.loads((outs[0] / "classes.json").read_text())["classes"]
    assert classes == ["cat", "dog"]
    assert {k: classes[r["label"]] for k, r in rows.items() if r["status"] == "ok"} == {
        rel.rsplit(".", 1)[0]: cls for rel, cls in real.items()}
    assert (rows["cat/pipe"]["status"], rows["cat/pipe"]["error"]) == (
        "read_error", "not a regular file (FIFO): cat/pipe.jpg")
    assert len(rows) == len(real) + 1
    tokens = [{p.name: p.read_bytes() for p in (out / "tokens").glob("*.parquet")} for out in outs]
    assert tokens[0] and tokens[0] == tokens[1]
    shutil.rmtree(tmp_path / "one")  # FIFOs and links are fine to leave, but keep tmp small
