"""Input patterns -> the ordered, de-duplicated list of shards a job works on.

A pattern is a local path, a `file://` URL, an `s3://` URL or any fsspec URL. Several patterns can
be joined with `::` (the WebDataset list syntax, so `a.tar::b.tar` is two shards, not an fsspec
chain). Brace patterns (`train-{000000..000999}.tar`) are expanded without listing the store; glob
characters (`*`, `?`, `[`) are matched against the store. The shard's *name* (basename without
`.tar`/`.tar.gz`/`.tgz`/`.parquet`) is what output files are called, so two inputs with one name
are refused. Class-folder trees (pipeline/sources/folders.py) and image Parquet files
(pipeline/sources/image_parquet.py) become shards too; pipeline/sources/inputs.py decides which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

from braceexpand import braceexpand

from pipeline.io import QUERY_PROTOCOLS, filesystem_for, options_for, protocol_of, strip_query  # noqa: F401 (re-export)

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
PARQUET_SUFFIX = ".parquet"
GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class Shard:
    """One input shard: `url` is what fsspec opens (a pre-signed URL keeps its query string here
    only), `name` is the stem output files are named by. Its identity is the URL *without* the
    query: a re-signed URL is the same shard, and no signature is written anywhere."""

    url: str
    name: str
    kind: str = "tar"                  # "tar" | "folder" (a slice of a class-folder tree) | "parquet"
    files: tuple[str, ...] = ()        # folder: the slice's image paths, relative to `url` (sorted)
    labels: tuple[int | None, ...] = ()  # folder: each file's class index (None: flat corpus)

    @property
    def display_url(self) -> str:
        """The URL to record and log: without query string."""
        return strip_query(self.url)


def shard_name(url: str) -> str:
    base = strip_query(url).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (*TAR_SUFFIXES, PARQUET_SUFFIX):
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


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
            globbed = any(c in strip_query(url) for c in GLOB_CHARS)
            urls.extend(_glob(url, storage_options) if globbed else [_normalise(url)])
    if not urls:
        raise ValueError(f"no input shards: the patterns {list(split_patterns(patterns))} matched nothing")
    shards, seen_urls, by_name = [], set(), {}
    for url in urls:
        if strip_query(url) in seen_urls:
            continue
        seen_urls.add(strip_query(url))
        kind = "parquet" if strip_query(url).endswith(PARQUET_SUFFIX) else "tar"
        shard = Shard(url=url, name=shard_name(url), kind=kind)
        if shard.name in by_name:
            raise ValueError(f"two input shards share the name {shard.name!r} ({by_name[shard.name]} and "
                             f"{shard.display_url}); output files are named by the shard's basename, so rename one")
        by_name[shard.name] = shard.display_url
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
