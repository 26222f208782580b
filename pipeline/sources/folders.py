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

Local trees may hold links, loops and special files; the walk lists each directory once, whatever
the tree (two loops, long link chains), and deterministically:
  * directories are identified by (st_dev, st_ino). First the tree is walked without following
    links (sorted, depth first): every directory reached that way is listed at its real path.
    Then the links to directories are followed in sorted order of their relative paths, compared
    component by component; each target is walked the same way (its own links queued in turn).
    A directory already listed is never entered again: a link to an ancestor (`cat/loop -> ..`),
    a second link to one folder, or a link to a sibling class adds nothing, so a sibling's images
    keep their own class. Such a skipped link is counted as ignored. A link to a folder outside
    DIR is followed (once); a class folder that is a link to a directory is a class, as in
    ImageFolder (it has no images of its own when its target is listed elsewhere).
  * everything that is not a directory is a file: a dangling link, or one whose target cannot be
    stat'ed, is listed like any file (an image extension makes it an image whose row is then a
    `read_error`, otherwise it is ignored). A directory named `x.jpg` is a directory, walked.
  * a file is read only when stat says it is a regular file, and it is opened non-blocking and
    checked again on the open descriptor, so a FIFO, socket or device can never hang a shard:
    its row is a `read_error` ("not a regular file (FIFO): cat/pipe.jpg").
  * read errors name the file by its path relative to DIR and the OS reason (`strerror`), never
    an absolute path, so the rows of two runs on two machines are the same bytes.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import posixpath
import stat
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
    ignored: int = 0                            # non-image files, loose files beside class folders,
                                                # directories not walked (listed already, unreadable)
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
    skipped: list[str] = []
    if is_local(url):
        classes, files, skipped = _walk_local(path)
    else:
        path = path.rstrip("/")
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True)
        classes = sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")
        files = [p[len(path) + 1:] for p in fs.find(path, withdirs=False, detail=False) if p.startswith(path + "/")]
    listing = FolderListing(root=root, classes=classes)
    class_set, skipped_set = set(classes), set(skipped)
    for rel in sorted(files + skipped):
        in_class = "/" in rel and rel.split("/", 1)[0] in class_set
        if (classes and not in_class) or not is_image(rel) or rel in skipped_set:
            listing.ignored += 1
            if len(listing.ignored_examples) < 5:
                listing.ignored_examples.append(rel)
            continue
        listing.images.append(rel)
    return listing


def _walk_local(root: str) -> tuple[list[str], list[str], list[str]]:
    """(classes, files, skipped) of the local tree at `root`, paths relative to it: files are all
    entries that are not directories; skipped are the directories not walked (already listed,
    unreadable). Each directory is walked once (see the module doc)."""
    try:
        root_stat = os.stat(root)
    except OSError:
        root_stat = None
    if root_stat is None or not stat.S_ISDIR(root_stat.st_mode):
        raise FileNotFoundError(f"{root} is not a directory")
    walk = _Walk(seen={_identity(root_stat)})
    walk.directory(root, "")
    # Links in sorted order of their path components: a link found while walking a link's target
    # extends that link's path, so it sorts after every link already followed (the order is total).
    while walk.links:
        _, rel, path = heapq.heappop(walk.links)
        target = _stat_or_none(path)
        if target is None or not stat.S_ISDIR(target.st_mode):
            walk.files.append(rel)  # dangling / unstat-able / changed since: a file, read_error if an image
        elif _identity(target) in walk.seen:
            walk.skipped.append(rel)  # a loop, or a folder already listed under another path
        else:
            walk.seen.add(_identity(target))
            walk.directory(path, rel)
    return sorted(walk.classes), walk.files, walk.skipped


@dataclass
class _Walk:
    """State of one `_walk_local`: directories listed, files found, links still to follow."""
    seen: set[tuple[int, int]]
    files: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)      # top-level directories, links included
    skipped: list[str] = field(default_factory=list)      # unlistable dirs, links to listed dirs
    links: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)  # heap: (parts, rel, path)

    def directory(self, top: str, top_rel: str) -> None:
        """Walk `top` (listed as `top_rel`) without following links: sorted, depth first, with an
        explicit stack (no recursion limit on deep trees); links to directories are queued."""
        stack = [(top, top_rel)]
        while stack:
            folder, rel_folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:  # an unreadable folder (os.walk skipped these silently): counted
                if not rel_folder:
                    raise  # DIR itself
                self.skipped.append(rel_folder)
                continue
            subdirs = []
            for entry in entries:
                rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
                kind = _entry_kind(entry)
                if kind == "link":
                    heapq.heappush(self.links, (tuple(rel.split("/")), rel, entry.path))
                    if not rel_folder and _is_dir_target(entry.path):
                        self.classes.append(entry.name)  # a class folder that is a link still counts
                elif kind == "dir":
                    if not rel_folder:
                        self.classes.append(entry.name)
                    subdirs.append((entry.path, rel))
                else:
                    self.files.append(rel)
            for path, rel in reversed(subdirs):  # reversed: popped in sorted order
                ident = _identity(_stat_or_none(path))
                if ident is None or ident in self.seen:  # a bind mount of an ancestor, or vanished
                    self.skipped.append(rel)
                    continue
                self.seen.add(ident)
                stack.append((path, rel))


def _entry_kind(entry: os.DirEntry) -> str:
    """The entry's kind, "link", "dir" or "file", from its d_type (no stat on most file systems)."""
    try:
        if entry.is_symlink():
            return "link"
        return "dir" if entry.is_dir(follow_symlinks=False) else "file"
    except OSError:
        return "file"


def _stat_or_none(path: str) -> os.stat_result | None:
    """os.stat following links; None for a dangling link, a link loop (ELOOP), no permission."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _is_dir_target(path: str) -> bool:
    st = _stat_or_none(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _identity(st: os.stat_result | None) -> tuple[int, int] | None:
    return None if st is None else (st.st_dev, st.st_ino)


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
            if isinstance(data, ReadFailure):
                sample.status, sample.error = "read_error", data.text
            elif isinstance(data, Exception):
                sample.status, sample.error = "read_error", f"{type(data).__name__}: {data}"
            elif data is None:
                sample.members[name] = Member(rel, None, skipped=f"file is over the limit of {max_member_bytes} bytes")
            else:
                sample.members[name] = Member(rel, data)
            yield flag_duplicate(sample, seen)


def _read(fs: Any, root: str, rels: tuple[str, ...], limit: int) -> list[bytes | None | Exception | ReadFailure]:
    """Each file's bytes (None when over `limit`; a ReadFailure or the exception when unreadable),
    reading at most limit + 1 bytes of any file; an object store's files are fetched concurrently."""
    if is_local(root):
        return [_read_local(root, rel, limit) for rel in rels]
    paths = [join_url(fs._strip_protocol(root), rel) for rel in rels]
    results = fs.cat_ranges(paths, [0] * len(paths), [limit + 1] * len(paths), on_error="return")
    return [r if isinstance(r, Exception) else (None if len(r) > limit else bytes(r)) for r in results]


@dataclass(frozen=True)
class ReadFailure:
    """Why a local file was not read, as row text made of the input alone: its path relative to
    DIR and the OS reason, never an absolute path (tmp dirs differ between runs and machines)."""
    text: str


# Not regular files, by the name the row gives them (stat.S_ISDIR etc. on the followed path).
_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, for ever.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def not_regular(mode: int, rel: str) -> ReadFailure | None:
    """None for a regular file; otherwise why it is never opened for reading."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), f"mode {stat.filemode(mode)}")
    return ReadFailure(f"not a regular file ({kind}): {rel}")


def _read_local(root: str, rel: str, limit: int) -> bytes | None | ReadFailure:
    path = os.path.join(root, rel)
    try:
        # Check before opening (opening a device can itself have effects), then again on the
        # descriptor: a file swapped for a FIFO in between is opened non-blocking and not read.
        failure = not_regular(os.stat(path).st_mode, rel)
        if failure is not None:
            return failure
        fd = os.open(path, _OPEN_FLAGS)
        with open(fd, "rb", closefd=True) as f:
            failure = not_regular(os.fstat(fd).st_mode, rel)
            if failure is not None:
                return failure
            data = f.read(limit + 1)
    except OSError as e:
        return ReadFailure(f"{type(e).__name__}: {e.strerror or 'cannot read'}: {rel}")
    return None if len(data) > limit else data
