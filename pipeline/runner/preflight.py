"""Checks that run before Ray starts and before anything is written: every input shard exists and
can be read, and the output can be written and honours conditional creates.

A problem is one line naming the URL and its role ("input" / "output") and raises UsageError
(exit 2): a missing object, a missing bucket, credentials that are refused, an output that is
not writable. Listing is per directory, not per shard: 100 000 shards in one prefix cost one
paginated listing, not 100 000 HEAD requests.
"""

from __future__ import annotations

import posixpath
import shutil
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.errors import UsageError, give_up_of
from pipeline.secrets import scrub_text
from pipeline.sinks.writer import ConditionalWriteUnsupported, OutputLayout
from pipeline.io import QUERY_PROTOCOLS, filesystem_for, protocol_of, strip_query
from pipeline.sources.listing import Shard

HTTP_CHECK_THREADS = 16
# A local output needs room for its records and the first token files; below this much free
# space a job would only fail shard after shard.
MIN_FREE_BYTES = 16 << 20
WRITE_PROBE_BYTES = 64 << 10


def describe_error(role: str, url: str, error: BaseException, options: dict[str, Any] | None) -> str:
    """One line: the role, the URL (no query string) and what is wrong with it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    name = type(error).__name__
    give_up = give_up_of(error)
    if give_up:  # the store kept failing (throttling, unreachable): its own line says how
        return scrub_text(f"{role} {strip_query(url)}: {give_up}", options)
    if "bucket" in text.lower() and "not exist" in text.lower():
        bucket = strip_query(url).split("://", 1)[-1].split("/", 1)[0]
        what = f"the bucket {bucket!r} does not exist"
    elif isinstance(error, FileNotFoundError):
        what = "does not exist"
    elif isinstance(error, PermissionError) or "credential" in name.lower() or "accessdenied" in text.lower():
        what = f"access refused (check the credentials / --storage-option): {text}"
    else:
        what = f"{name}: {text}"
    return scrub_text(f"{role} {strip_query(url)}: {what}", options)


def check_inputs(shards: list[Shard], storage_options: dict[str, Any] | None) -> None:
    """Every shard exists (one listing per parent directory; HTTP URLs: a HEAD each, in parallel)."""
    by_parent: dict[str, list[Shard]] = defaultdict(list)
    web: list[Shard] = []
    for shard in shards:
        if protocol_of(shard.url) in QUERY_PROTOCOLS:
            web.append(shard)
        else:
            by_parent[posixpath.dirname(shard.url.rstrip("/"))].append(shard)
    for parent, members in by_parent.items():
        _check_listed(parent, members, storage_options)
    if web:
        _check_web(web, storage_options)


def _check_listed(parent: str, shards: list[Shard], storage_options: dict[str, Any] | None) -> None:
    fs, path = filesystem_for(shards[0].url, storage_options)
    folder = posixpath.dirname(path.rstrip("/"))
    try:
        fs.invalidate_cache(folder)
        entries = {e["name"].rstrip("/"): e for e in fs.ls(folder, detail=True)}
    except Exception as e:
        raise UsageError(describe_error("input", shards[0].url, e, storage_options)) from e
    for shard in shards:
        _, shard_path = filesystem_for(shard.url, storage_options)
        entry = entries.get(shard_path.rstrip("/"))
        if entry is None:
            raise UsageError(describe_error("input", shard.url, FileNotFoundError(shard_path), storage_options))
        if entry.get("type") == "directory":
            raise UsageError(f"input {shard.display_url}: is a directory, not a shard file (give a pattern "
                             f"such as {shard.display_url.rstrip('/')}/*.tar)")


def _check_web(shards: list[Shard], storage_options: dict[str, Any] | None) -> None:
    fs, _ = filesystem_for(shards[0].url, storage_options)

    def missing(shard: Shard) -> BaseException | None:
        try:
            return None if fs.exists(shard.url) else FileNotFoundError(shard.display_url)
        except Exception as e:  # refused, unreachable
            return e

    with ThreadPoolExecutor(min(HTTP_CHECK_THREADS, len(shards))) as pool:
        for shard, error in zip(shards, pool.map(missing, shards)):
            if error is not None:
                raise UsageError(describe_error("input", shard.url, error, storage_options))


def check_free_space(layout: OutputLayout) -> None:
    """A local output on a (nearly) full disk is refused before anything else is written."""
    free = shutil.disk_usage(layout.root).free
    if free < MIN_FREE_BYTES:
        raise UsageError(f"output {layout.url}: its disk is full ({free / 2**20:.1f} MiB free, scaletok wants at "
                         f"least {MIN_FREE_BYTES / 2**20:.0f} MiB); free some space or choose another --output")


def check_output(layout: OutputLayout, storage_options: dict[str, Any] | None, allow_unconditional: bool) -> None:
    """The output can be written, and (object stores) refuses a second create of one name:
    exactly-once rests on it. The probe object is removed again."""
    try:
        if layout.is_local:
            layout.makedirs()
        honours = layout.probe_conditional_create()
        if layout.is_local:
            check_free_space(layout)
            probe = layout.join("_tmp", f"{layout.run_id or 'run'}-write-probe")
            layout.put(probe, bytes(WRITE_PROBE_BYTES))  # not empty: an empty write succeeds on a full disk
            layout.remove(probe)
    except ConditionalWriteUnsupported:
        honours = False
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(describe_error("output", layout.url, e, storage_options)) from e
    if not honours and not allow_unconditional:
        raise UsageError(
            f"output {layout.url}: the store ignores conditional creates (If-None-Match: *), so two attempts "
            f"of one shard could both commit; use a store that honours them (AWS S3, MinIO, GCS, local disk), or "
            f"pass --allow-unconditional-commit if no two attempts of a shard can ever run at once (one job, "
            f"no network partitions)")
