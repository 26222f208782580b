"""One shard -> its samples, in tar order, streamed (the shard is never loaded whole).

WebDataset-style stages, each a generator: `open_shard` (bytes) -> `iter_members` (tar members)
-> `group_samples` (members sharing a key, adjacent). Unlike webdataset's own stages, damage in
the tar never ends the stream silently:

- a member cut short, a header that fails its checksum, a tar that stops without its
  end-of-archive marker, or junk after it -> one last sample carrying a `truncated_tar` /
  `corrupt_tar` status (the samples before it are kept);
- a tar that cannot be opened at all (missing object, not a tar) raises `UnreadableShard`, which
  the runner retries and then reports;
- a key seen before in the shard (also: two members with the same name) -> a `duplicate_key`
  sample, so training never sees two rows with one key as the same image.

Samples are grouped exactly as the `webdataset` library groups them (`base_plus_ext`,
`group_by_keys`): the key is the member's directory plus its basename up to the *first* dot, the
field is everything after it, lower-cased (`a/000001.seg.png` -> key `a/000001`, field `seg.png`);
members whose basename has no dot or starts with one, and `__*__` metadata members, belong to no
sample. Where webdataset raises (a field twice in one sample) we start a new sample flagged
`duplicate_key` instead.

Member names that are not UTF-8 (tarfile hands them over with surrogate escapes) cannot be
stored as Arrow strings; the key keeps a lossless escape instead (`escape_name`): every byte that
is not part of valid UTF-8 becomes `\\xNN` and a backslash becomes `\\\\`; names without either are
unchanged. `unescape_name` gives the original bytes back.
"""

from __future__ import annotations

import gzip
import lzma
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

from pipeline.io import filesystem_for, strip_query

READ_BLOCK = 8 << 20
DEFAULT_MAX_MEMBER_BYTES = 512 << 20
# Errors that mean "these bytes are damaged" (deterministic) rather than "the network hiccupped".
CORRUPTION_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


class UnreadableShard(Exception):
    """The shard could not be opened or is not a tar from its first byte."""


@dataclass
class Member:
    name: str
    data: bytes | None          # None when the member was skipped (see `skipped`)
    skipped: str | None = None  # why the data was not read (e.g. larger than the member limit)


@dataclass
class TarProblem:
    status: str                 # "truncated_tar" | "corrupt_tar"
    message: str
    member: str | None = None   # the member being read when it happened, when known
    offset: int = 0


@dataclass
class RawSample:
    """A sample as stored: `members` maps extension -> Member, in tar order."""

    key: str
    index: int
    members: dict[str, Member] = field(default_factory=dict)
    status: str | None = None   # set when the reader already knows the sample is bad
    error: str | None = None


# webdataset's `base_plus_ext` and its metadata-member pattern, so that samples group alike.
KEY_AND_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
META_MEMBER = re.compile(r"__[^/]*__($|/)")
_ESCAPED = re.compile(rb"\\\\|\\x([0-9a-fA-F]{2})")


def split_key(name: str) -> tuple[str | None, str | None]:
    """(key, field) as webdataset splits a member name; (None, None) for a member of no sample."""
    if META_MEMBER.match(name):
        return None, None
    match = KEY_AND_FIELD.match(name)
    if not match:
        return None, None
    return match.group(1), match.group(2).lower()


def escape_name(name: str) -> str:
    """A member name as a storable (UTF-8) string, losslessly: `\\` -> `\\\\`, a byte that is not
    valid UTF-8 (a surrogate escape from tarfile) -> `\\xNN`. Plain names are unchanged."""
    if "\\" not in name:
        try:
            name.encode("utf-8")
            return name
        except UnicodeEncodeError:
            pass
    doubled = name.replace("\\", "\\\\")
    try:
        raw = doubled.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no byte escape (odd pax headers)
        raw = doubled.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def unescape_name(stored: str) -> bytes:
    """The original name's bytes from `escape_name`'s output."""
    return _ESCAPED.sub(lambda m: b"\\" if m.group(1) is None else bytes([int(m.group(1), 16)]),
                        stored.encode("utf-8"))


def open_shard(url: str, storage_options: dict[str, Any] | None = None) -> BinaryIO:
    fs, path = filesystem_for(url, storage_options)
    try:
        return fs.open(path, "rb", block_size=READ_BLOCK)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise UnreadableShard(f"cannot open {strip_query(url)}: {type(e).__name__}: "
                              f"{str(e).replace(url, strip_query(url))}") from e


def iter_members(fileobj: BinaryIO, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                 url: str = "") -> Iterator[Member | TarProblem]:
    """Regular-file members in order; damage ends the stream with one `TarProblem`."""
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*")
    except CORRUPTION_ERRORS as e:
        raise UnreadableShard(f"{url or 'shard'} is not a readable tar: {e}") from e
    current: str | None = None  # the member whose data is being read
    last: str | None = None     # the last member whose header was read
    try:
        for info in tar:
            if not info.isfile():
                continue
            current = last = info.name
            if info.size > max_member_bytes:
                # Not read: tarfile skips the data when the loop advances.
                yield Member(info.name, None, skipped=f"member is {info.size} bytes, over the "
                                                      f"limit of {max_member_bytes}")
            else:
                data = tar.extractfile(info).read()
                yield Member(info.name, data)
            current = None
    except CORRUPTION_ERRORS as e:
        truncated = "unexpected end" in str(e) or isinstance(e, EOFError)
        # Data cut short is detected either while reading it or while skipping past it.
        member = current or (last if truncated else None)
        yield TarProblem("truncated_tar" if truncated else "corrupt_tar", f"{type(e).__name__}: {e}", member,
                         int(getattr(tar, "offset", 0)))
        return
    problem = _check_end(tar)
    if problem is not None:
        yield problem


def _check_end(tar: tarfile.TarFile) -> TarProblem | None:
    """tarfile stops quietly at a bad header or a missing end marker; tell those apart from a
    clean end by looking at what it consumed for the failed header and at what follows it."""
    stream = tar.fileobj
    consumed = stream.tell() - tar.offset
    if consumed == 0:
        return TarProblem("truncated_tar", "the tar ends without an end-of-archive marker "
                                           f"after byte {tar.offset} (truncated?)", offset=tar.offset)
    if consumed < tarfile.BLOCKSIZE:
        return TarProblem("truncated_tar", f"the tar ends inside a member header at byte {tar.offset}",
                          offset=tar.offset)
    try:
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                return None
            if chunk.count(0) != len(chunk):
                return TarProblem("corrupt_tar", f"invalid tar header at byte {tar.offset}; the rest "
                                                 "of the shard could not be read", offset=tar.offset)
    except CORRUPTION_ERRORS as e:
        return TarProblem("truncated_tar", f"{type(e).__name__}: {e}", offset=tar.offset)


def flag_duplicate(sample: RawSample, seen: dict[str, int]) -> RawSample:
    """A key already seen in the shard gets `duplicate_key` (unless the sample already has a
    status); `seen` maps each first-seen key to its sample index. Every layout's reader uses it."""
    if sample.key not in seen:
        seen[sample.key] = sample.index
    elif sample.status is None:
        sample.status = "duplicate_key"
        sample.error = f"key {sample.key!r} already appeared as sample #{seen[sample.key]} of this shard"
    return sample


def group_samples(members: Iterator[Member | TarProblem]) -> Iterator[RawSample]:
    """Adjacent members with one key form a sample; duplicates and damage become flagged samples."""
    seen: dict[str, int] = {}
    current: RawSample | None = None
    index = 0

    def start(key: str) -> RawSample:
        nonlocal index
        sample = RawSample(key=key, index=index)
        index += 1
        flag_duplicate(sample, seen)
        return sample

    for item in members:
        if isinstance(item, TarProblem):
            key = split_key(item.member)[0] if item.member else None
            key = escape_name(key) if key is not None else None
            if current is not None and key != current.key:
                yield current
                current = None
            if current is None:
                current = start(key if key is not None else f"<{item.status} at byte {item.offset}>")
            if current.status is None:
                current.status, current.error = item.status, item.message
            else:
                current.error = f"{current.error}; {item.status}: {item.message}"
            yield current
            return
        key, ext = split_key(item.name)
        if key is None:
            continue  # not part of any sample (webdataset skips it too)
        key = escape_name(key)
        if current is not None and (key != current.key or ext in current.members):
            yield current
            current = None
        if current is None:
            current = start(key)
        current.members[ext] = item
    if current is not None:
        yield current


def iter_samples(url: str, storage_options: dict[str, Any] | None = None,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[RawSample]:
    """open -> untar -> group, closing the stream whatever happens."""
    with open_shard(url, storage_options) as f:
        yield from group_samples(iter_members(f, max_member_bytes, strip_query(url)))


def count_samples(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int, list[str]]:
    """(number of samples, their keys in order) without decoding anything; what `verify` recounts."""
    keys = [s.key for s in iter_samples(url, storage_options, max_member_bytes=0)]
    return len(keys), keys


__all__ = ["Member", "RawSample", "TarProblem", "UnreadableShard", "count_samples", "escape_name", "flag_duplicate",
           "group_samples", "iter_members", "iter_samples", "open_shard", "split_key", "unescape_name"]
