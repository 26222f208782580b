"""A class-folder tree (the ImageNet layout `train/<wnid>/<name>.JPEG`) -> virtual shards -> samples.

Labels follow torchvision's `ImageFolder`: the classes are the top-level folders of DIR in sorted
order (hidden ones included, as ImageFolder does), a file's label is its class folder's index,
and images are the files whose extension is one of ImageFolder's (case-insensitive), at any
depth below their class folder. Other files, and files directly in DIR when it has class
folders, are ignored and counted. A DIR without subfolders is a flat corpus: every image at its
top level, label null.

Files are taken in sorted relative-path order and cut into virtual shards of
`images_per_shard`, named `<DIR basename>-<index>-<digest>`: the digest is of the shard's file
list, so a shard whose files change gets a new name (and is redone), never a stale "done". Each
file is one sample; its key is the relative path without extension (`n01440764/n01440764_10026`).
Listing is one recursive walk (local) or one paginated listing (object stores).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline.io import filesystem_for, is_local, join_url
from pipeline.sources.listing import Shard
from pipeline.sources.tar_stream import Member, RawSample, escape_name, flag_duplicate

# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
READ_AHEAD = 32          # files fetched concurrently from an object store
DEFAULT_IMAGES_PER_SHARD = 1000


@dataclass
class FolderListing:
    root: str                                   # the DIR URL (local paths absolute)
    classes: list[str]                          # sorted class folders; [] for a flat corpus
    images: list[str] = field(default_factory=list)   # relative paths, sorted
    ignored: int = 0                            # non-image files, loose files beside class folders
    ignored_examples: list[str] = field(default_factory=list)

    def label_of(self, rel: str) -> int | None:
        if not self.classes:
            return None
        return self._index[rel.split("/", 1)[0]]

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.classes)}


def folder_key(rel: str) -> str:
    """A file's sample key: its path relative to DIR without extension, escaped like tar keys."""
    return escape_name(posixpath.splitext(rel)[0])


def is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_FOLDER_EXTENSIONS)


def list_folder(url: str, storage_options: dict[str, Any] | None = None) -> FolderListing:
    """Classes and images of the tree at `url` (raises FileNotFoundError when it is no folder)."""
    fs, path = filesystem_for(url, storage_options)
    root = path if is_local(url) else url.rstrip("/")
    if is_local(url):
        classes, files = _walk_local(path)
    else:
        path = path.rstrip("/")
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True)
        classes = sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")
        files = [p[len(path) + 1:] for p in fs.find(path, withdirs=False, detail=False) if p.startswith(path + "/")]
    listing = FolderListing(root=root, classes=classes)
    class_set = set(classes)
    for rel in sorted(files):
        in_class = "/" in rel and rel.split("/", 1)[0] in class_set
        if (classes and not in_class) or not is_image(rel):
            listing.ignored += 1
            if len(listing.ignored_examples) < 5:
                listing.ignored_examples.append(rel)
            continue
        listing.images.append(rel)
    return listing


def _walk_local(root: str) -> tuple[list[str], list[str]]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a directory")
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir(follow_symlinks=True))
    files: list[str] = []
    prefix = len(root.rstrip("/")) + 1
    for folder, _, names in os.walk(root, followlinks=True):  # ImageFolder follows links too
        rel_folder = folder[prefix:]
        files.extend(f"{rel_folder}/{n}" if rel_folder else n for n in names)
    return classes, files


def folder_shards(listing: FolderListing, images_per_shard: int = DEFAULT_IMAGES_PER_SHARD) -> list[Shard]:
    """The listing's images cut into virtual shards in sorted path order (see the module doc)."""
    if images_per_shard < 1:
        raise ValueError("--images-per-shard must be >= 1")
    base = posixpath.basename(listing.root.rstrip("/")) or "images"
    shards = []
    for index, start in enumerate(range(0, len(listing.images), images_per_shard)):
        files = tuple(listing.images[start:start + images_per_shard])
        digest = hashlib.sha256("\n".join(files).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        shards.append(Shard(url=listing.root, name=f"{base}-{index:06d}-{digest}", kind="folder", files=files,
                            labels=tuple(listing.label_of(f) for f in files)))
    return shards


def iter_folder_samples(shard: Shard, storage_options: dict[str, Any] | None,
                        max_member_bytes: int) -> Iterator[RawSample]:
    """One sample per file of the slice, in order: the image as its only field plus its label as
    a `cls` field, so decoding is the same as for a tar. A file that vanished or cannot be read
    becomes a `read_error` row; one over `max_member_bytes` is not read (`too_large`)."""
    fs, _ = filesystem_for(shard.url, storage_options)
    seen: dict[str, int] = {}
    for start in range(0, len(shard.files), READ_AHEAD):
        chunk = shard.files[start:start + READ_AHEAD]
        contents = _read(fs, shard.url, chunk, max_member_bytes)
        for offset, (rel, data) in enumerate(zip(chunk, contents)):
            index = start + offset
            stem, ext = posixpath.splitext(rel)
            sample = RawSample(key=folder_key(rel), index=index)
            label = shard.labels[index] if shard.labels else None
            if label is not None:
                sample.members["cls"] = Member(f"{stem}.cls", str(label).encode())
            name = ext[1:].lower()
            if isinstance(data, Exception):
                sample.status, sample.error = "read_error", f"{type(data).__name__}: {data}"
            elif data is None:
                sample.members[name] = Member(rel, None, skipped=f"file is over the limit of {max_member_bytes} bytes")
            else:
                sample.members[name] = Member(rel, data)
            yield flag_duplicate(sample, seen)


def _read(fs: Any, root: str, rels: tuple[str, ...], limit: int) -> list[bytes | None | Exception]:
    """Each file's bytes (None when over `limit`; the exception when unreadable), reading at most
    limit + 1 bytes of any file; an object store's files are fetched concurrently."""
    paths = [join_url(fs._strip_protocol(root), rel) if not is_local(root) else os.path.join(root, rel)
             for rel in rels]
    if is_local(root):
        return [_read_local(p, limit) for p in paths]
    results = fs.cat_ranges(paths, [0] * len(paths), [limit + 1] * len(paths), on_error="return")
    return [r if isinstance(r, Exception) else (None if len(r) > limit else bytes(r)) for r in results]


def _read_local(path: str, limit: int) -> bytes | None | Exception:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        return e
    return None if len(data) > limit else data
