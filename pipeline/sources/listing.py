"""Input patterns -> the ordered, de-duplicated list of shards a job works on.

A pattern is a local path, a `file://` URL, an `s3://` URL or any fsspec URL. Several patterns can
be joined with `::` (the WebDataset list syntax, so `a.tar::b.tar` is two shards, not an fsspec
chain). Brace patterns (`train-{000000..000999}.tar`) are expanded without listing the store; glob
characters (`*`, `?`, `[`) are matched against the store. The shard's *name* (basename without
`.tar`/`.tar.gz`/`.tgz`) is what output files are called, so two inputs with one name are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import fsspec
from braceexpand import braceexpand

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
GLOB_CHARS = ("*", "?", "[")
LOCAL_PROTOCOLS = ("file", "local")


@dataclass(frozen=True)
class Shard:
    """One input shard: `url` is what fsspec opens, `name` is the stem output files are named by."""

    url: str
    name: str


def shard_name(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in TAR_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def protocol_of(url: str) -> str:
    protocol = fsspec.utils.get_protocol(url)
    return "file" if protocol in LOCAL_PROTOCOLS else protocol


def options_for(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options go to remote filesystems only (a local path must not receive S3 keys)."""
    return {} if protocol_of(url) == "file" else dict(storage_options or {})


def filesystem_for(url: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, path inside it) for a URL or local path."""
    fs, path = fsspec.core.url_to_fs(url, **options_for(url, storage_options))
    return fs, path


def split_patterns(patterns: str | Iterable[str]) -> list[str]:
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    out: list[str] = []
    for item in items:
        out.extend(p.strip() for p in str(item).split("::") if p.strip())
    return out


def expand_shards(patterns: str | Iterable[str], storage_options: dict[str, Any] | None = None) -> list[Shard]:
    """All shards named by `patterns`, in the order given (globs sorted), each listed once."""
    urls: list[str] = []
    for pattern in split_patterns(patterns):
        for url in braceexpand(pattern):
            urls.extend(_glob(url, storage_options) if any(c in url for c in GLOB_CHARS) else [_normalise(url)])
    if not urls:
        raise ValueError(f"no input shards: the patterns {list(split_patterns(patterns))} matched nothing")
    shards, seen_urls, by_name = [], set(), {}
    for url in urls:
        if url in seen_urls:
            continue
        seen_urls.add(url)
        shard = Shard(url=url, name=shard_name(url))
        if shard.name in by_name:
            raise ValueError(f"two input shards share the name {shard.name!r} ({by_name[shard.name]} and {url}); "
                             "output files are named by the shard's basename, so rename one of them")
        by_name[shard.name] = url
        shards.append(shard)
    return shards


def _normalise(url: str) -> str:
    if protocol_of(url) == "file":
        return os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
    return url


def _glob(pattern: str, storage_options: dict[str, Any] | None) -> list[str]:
    fs, path = filesystem_for(pattern, storage_options)
    protocol = protocol_of(pattern)
    matches = sorted(fs.glob(path))
    if not matches:
        raise ValueError(f"input pattern {pattern!r} matched no files")
    if protocol == "file":
        return [os.path.abspath(m) for m in matches]
    return [fs.unstrip_protocol(m) for m in matches]
