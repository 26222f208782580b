"""The one filesystem helper every URL in the project goes through (ground floor: imports no
other pipeline module but pipeline/s3_store.py, the S3 retry policy). A URL is a local path, `file://`, `s3://`, `https://` or any fsspec URL.

Storage options (credentials, endpoints) go to remote filesystems only: a local path never
receives S3 keys. HTTP(S) URLs may carry a query string (a pre-signed URL's signature); it is
needed to open the object but is never part of its identity (`strip_query`).
"""

from __future__ import annotations

import os
from typing import Any

import fsspec

LOCAL_PROTOCOLS = ("file", "local")
S3_PROTOCOLS = ("s3", "s3a")
QUERY_PROTOCOLS = ("http", "https")  # URLs whose "?..." is a query string (e.g. a signature)


def protocol_of(url: str) -> str:
    protocol = fsspec.utils.get_protocol(url)
    return "file" if protocol in LOCAL_PROTOCOLS else protocol


def is_local(url: str) -> bool:
    return protocol_of(url) == "file"


def options_for(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options go to remote filesystems only (a local path must not receive S3 keys)."""
    return {} if is_local(url) else dict(storage_options or {})


def filesystem_for(url: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, path inside it) for a URL or local path; local paths are made absolute."""
    if is_local(url):
        url = os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
    if protocol_of(url) in S3_PROTOCOLS:
        # Our retry policy and give-up messages (pipeline/s3_store.py); imported here so that
        # local-only jobs never load botocore.
        from pipeline.s3_store import RetryingS3FileSystem

        fs = RetryingS3FileSystem(**options_for(url, storage_options))
        return fs, fs._strip_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **options_for(url, storage_options))
    return fs, path


def strip_query(url: str) -> str:
    """`https://host/a.tar?X-Amz-Signature=...` -> `https://host/a.tar`; other URLs unchanged."""
    if protocol_of(url) in QUERY_PROTOCOLS:
        return url.split("?", 1)[0].split("#", 1)[0]
    return url


def join_url(url: str, *parts: str) -> str:
    """`url` with path parts appended ("/"-joined; local paths too)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])
