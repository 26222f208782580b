"""Arrow table -> Parquet bytes (deterministic) -> a file under the job's output directory.

Output layout (OUT is a local directory or any fsspec URL):
  OUT/tokens/<shard>.parquet      the data, one file per input shard
  OUT/_manifest/<shard>.json      the commit record (see manifest.py); a shard is done iff it exists
  OUT/_job.json                   the job's fingerprint and token-relevant config (resume guard)
  OUT/config.yaml                 the full TokenizeConfig of the latest run
  OUT/_stats.json                 job-level counts, throughput, codebook usage
  OUT/_attempts/<shard>@<id>.parquet  one attempt's data until the commit decides (see manifest.py)
  OUT/_tmp/                       local temp files of in-flight writes (each run removes its own)

Determinism: the same rows give the same bytes. Nothing time-dependent goes into the data file;
writer settings are fixed here (zstd, dictionary encoding, statistics, fixed row groups) and
depend only on the table (`write_options`): an integer tokens column too small to amortise its
dictionary is written BYTE_STREAM_SPLIT, so a file of any row count stays within 1.1 x
log2(V)/8 bytes per token (benchmarks/storage.py, benchmarks/RESULTS.md section 5).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io import filesystem_for, protocol_of

ATTEMPT_SEPARATOR = "@"     # _attempts/<shard>@<attempt id>.parquet (attempt ids hold no "@")
DEFAULT_ROW_GROUP_ROWS = 2048  # ~1.4 MB of uint16 tokens per group at 680 tokens/row: fine-grained
                               # enough for shuffled training reads, large enough for scan speed
WRITE_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True,
                     write_statistics=True, version="2.6", data_page_version="1.0", store_schema=True)
# The integer `tokens` column (benchmarks/storage.py, RESULTS.md section 5). A dictionary page
# holds every distinct code at 4 bytes before zstd: in a 32-row file of V = 4096 that is ~0.4 byte
# per token on top of the bit-packed ids. So the dictionary is kept only where it is amortised
# (at least DICTIONARY_MIN_USES tokens per distinct code); otherwise BYTE_STREAM_SPLIT stores each
# byte of the codes in its own stream, which zstd codes near each stream's entropy. In a small
# column the streams share one zstd block and one entropy table (1.15 x log2(V)/8 at level 3), so
# small columns get level 16, whose block splitter gives each stream its own table (1.06 x);
# larger ones span several blocks per stream already, where level 16 would cost ~10x the write time.
TOKENS_LEAF = "tokens.list.element"
DICTIONARY_MIN_USES = 64
SMALL_TOKENS_LEVEL = 16
SMALL_TOKENS_BYTES = 1 << 20  # the column's plain size (4 bytes a code) up to which level 16 is used


def attempt_file(shard: str, attempt_id: str) -> str:
    """Where one attempt writes its data (relative to OUT) before the commit decides whose data is
    the shard's; `manifest.parse_attempt_name` reads the name back."""
    return f"_attempts/{shard}{ATTEMPT_SEPARATOR}{attempt_id}.parquet"


def write_options(table: pa.Table) -> dict[str, Any]:
    """The writer settings for `table`: WRITE_OPTIONS, and for an integer tokens column whose
    dictionary would not pay, BYTE_STREAM_SPLIT. A pure function of the rows: same rows, same bytes."""
    index = table.schema.get_field_index("tokens")
    if index < 0 or not pa.types.is_integer(table.schema.field(index).type.value_type):
        return dict(WRITE_OPTIONS)  # float latents (and tables without tokens) as before
    codes = pc.list_flatten(table.column("tokens"))
    if len(codes) >= DICTIONARY_MIN_USES * pc.count_distinct(codes).as_py():
        return dict(WRITE_OPTIONS)
    others = [f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name
              for f in table.schema if f.name != "tokens"]
    level = SMALL_TOKENS_LEVEL if 4 * len(codes) <= SMALL_TOKENS_BYTES else WRITE_OPTIONS["compression_level"]
    return {**WRITE_OPTIONS, "use_dictionary": others, "column_encoding": {TOKENS_LEAF: "BYTE_STREAM_SPLIT"},
            "compression_level": {**{c: WRITE_OPTIONS["compression_level"] for c in others}, TOKENS_LEAF: level}}


def parquet_bytes(table: pa.Table, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(1, row_group_rows), **write_options(table))
    return sink.getvalue()


# What os.link says on filesystems without hard links (some FUSE/SMB mounts).
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}


class ConditionalWriteUnsupported(RuntimeError):
    """The output store cannot create an object only if it is absent (see `probe_conditional_create`)."""


# Messages of a failed conditional create that s3fs does not map to FileExistsError (412
# Precondition Failed, or 409 ConditionalRequestConflict while another create is in flight).
_EXISTS_HINTS = ("412", "precondition", "pre-condition", "conditionalrequestconflict")


@dataclass
class OutputLayout:
    """Paths of one job's output, on the filesystem that holds it, and the few operations the
    commit protocol (sinks/manifest.py) is built from.

    `run_id` names this run's temporary files and attempt files (`<run_id>-...`), so that clean-up
    removes only what this run wrote, never a concurrent job's in-flight files.
    `allow_unconditional`: on a store without conditional creates, fall back to check-then-write
    (racy; the documented opt-in of `--allow-unconditional-commit`)."""

    url: str
    storage_options: dict[str, Any] | None = None
    run_id: str = ""
    allow_unconditional: bool = False

    def __post_init__(self) -> None:
        self.fs, self.root = filesystem_for(self.url, self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = protocol_of(self.url) == "file"

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def tokens_dir(self) -> str:
        return self.join("tokens")

    @property
    def manifest_dir(self) -> str:
        return self.join("_manifest")

    @property
    def attempt_dir(self) -> str:
        return self.join("_attempts")

    @property
    def tmp_dir(self) -> str:
        return self.join("_tmp")

    def data_path(self, shard: str) -> str:
        return self.join("tokens", f"{shard}.parquet")

    def manifest_path(self, shard: str) -> str:
        return self.join("_manifest", f"{shard}.json")

    def new_attempt_id(self) -> str:
        return f"{self.run_id or 'run'}-{uuid.uuid4().hex[:12]}"

    def makedirs(self) -> None:
        if self.is_local:
            for d in (self.tokens_dir, self.manifest_dir, self.attempt_dir, self.tmp_dir):
                os.makedirs(d, exist_ok=True)
        # object stores have no directories

    def put(self, path: str, data: bytes) -> None:
        """Whole-object write that a reader never sees half done: local temp + rename, or one PUT.
        A PUT whose outcome is unknown (its response was cut and the retries failed) is settled by
        reading: done if the store holds `data`, else the error stands."""
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(self._write_temp(path, data), path)
            return
        try:
            self.fs.pipe_file(path, data)
        except Exception:
            if not self.holds(path, data):
                raise

    def move(self, src: str, dst: str, data: bytes) -> None:
        """Make `dst` hold `data`, the content of `src`, and drop `src`: a rename locally (no copy);
        on object stores a PUT of the bytes in hand (settled as `put`), then a DELETE. A DELETE
        that fails leaves `src` for `manifest.clean_attempts`: `dst` is in place either way."""
        if self.is_local:
            try:
                os.replace(src, dst)
            except FileNotFoundError:  # src removed meanwhile (a repair or clean-up): write the bytes
                self.put(dst, data)
            return
        self.put(dst, data)
        self.remove(src, settle=True)

    def holds(self, path: str, data: bytes) -> bool:
        """Whether `path` exists with exactly `data` (False when it cannot be read either)."""
        try:
            self.fs.invalidate_cache()
            return self.fs.size(path) == len(data) and self.fs.cat_file(path) == data
        except Exception:
            return False

    def create_if_absent(self, path: str, data: bytes) -> bool:
        """Create `path` with `data` unless it exists; True if this call created it.

        Local: the content goes to a temp file that is hard-linked into place (link fails if the
        name exists: O_EXCL semantics, and the file is never seen half written). Object stores:
        a conditional PUT (s3fs mode "x" = If-None-Match: *); a 412 is "exists", not an error.
        """
        if self.is_local:
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in NO_HARD_LINKS:
                    raise  # a full disk, say: not a reason to change the way of creating
                # No hard links here (some FUSE/SMB mounts): O_EXCL create of the name itself.
                # Still exactly once; a crash mid-write leaves a manifest that reads as
                # unreadable (a conflict `verify` reports), never a silently done shard.
                return _create_exclusive(path, data)
            finally:
                os.unlink(tmp)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            # Also what the retry of a create whose response was cut gets: the first try was
            # applied. Reading decides: the object holds our bytes (this call created it) or not.
            return self.holds(path, data)
        except (NotImplementedError, ValueError) as e:
            if not self.allow_unconditional:
                raise ConditionalWriteUnsupported(
                    f"{self.url}: the filesystem cannot create a file only if it is absent ({e})") from e
            if self.fs.exists(path):  # the opt-in weaker mode: check, then write
                return self.holds(path, data)
            self.put(path, data)
            return True
        except OSError as e:
            if any(h in str(e).lower() for h in _EXISTS_HINTS):
                return self.holds(path, data)
            # Outcome unknown (retries exhausted): ours if the store holds our bytes; another
            # attempt's if it holds other bytes; nothing happened if there is nothing there.
            if self.holds(path, data):
                return True
            if self._exists_now(path):
                return False
            raise

    def _exists_now(self, path: str) -> bool:
        self.fs.invalidate_cache()
        try:
            return self.fs.exists(path)
        except Exception:
            return False

    def probe_conditional_create(self) -> bool:
        """Whether the store refuses a second create of one name (what exactly-once rests on).
        Creates and deletes one small object under _probe/. Local filesystems always do."""
        if self.is_local:
            return True
        nonce = uuid.uuid4().hex
        path = self.join("_probe", f"{self.run_id or 'probe'}-{nonce}")
        first, second = f"first {nonce}".encode(), f"second {nonce}".encode()
        try:
            # Unique bytes: a create whose response was cut (retried, then answered 412) is
            # recognised by reading them back, not blamed on the store.
            if not self.create_if_absent(path, first):
                return False  # cannot happen on a fresh name unless the store misbehaves
            return not self.create_if_absent(path, second) and self.read_bytes(path) == first
        except ConditionalWriteUnsupported:
            return False
        finally:
            self.remove(path, settle=True)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def list_dir(self, directory: str, suffix: str) -> list[str]:
        """Paths in `directory` ending in `suffix`, sorted (fresh: never a cached listing)."""
        try:
            if self.is_local:  # os.listdir: fsspec's local ls stats every entry (100 000: ~1 s)
                return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(suffix))
            self.fs.invalidate_cache()  # another process may have committed since the last listing
            names = self.fs.ls(directory, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if n.endswith(suffix))

    def remove(self, path: str, recursive: bool = False, settle: bool = False) -> None:
        """Delete `path` (absent is fine). `settle`: a DELETE that fails is not an error when
        the object is gone anyway (a cut response) or still there (it stays for clean-up)."""
        try:
            self.fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass
        except Exception:
            if not settle:
                raise

    def clean_tmp(self) -> int:
        """Remove this run's leftover temp files (never another run's in-flight ones); how many."""
        if not (self.is_local and self.run_id and os.path.isdir(self.tmp_dir)):
            return 0
        removed = 0
        for name in os.listdir(self.tmp_dir):
            if name.startswith(f"{self.run_id}-"):
                try:
                    os.unlink(os.path.join(self.tmp_dir, name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def multipart_uploads(self) -> list[tuple[str, str, str]]:
        """Interrupted multipart uploads under _attempts/ as (object name, key, upload id), on
        S3-compatible stores; [] elsewhere or when the store does not let us list them."""
        if self.is_local or not hasattr(self.fs, "call_s3"):
            return []
        bucket, _, prefix = self.join("_attempts", "").partition("/")
        try:
            listing = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        except Exception:
            return []
        return [(u["Key"].rsplit("/", 1)[-1], u["Key"], u["UploadId"]) for u in listing.get("Uploads", [])]

    def abort_multipart_upload(self, key: str, upload_id: str) -> bool:
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            return True
        except Exception:
            return False

    def _write_temp(self, path: str, data: bytes) -> str:
        """`data` in a fresh, fsync'ed temp file of this run beside the output (same filesystem).
        A failed write (a full disk) removes the temp file and names the path it was for."""
        os.makedirs(self.tmp_dir, exist_ok=True)
        tmp = os.path.join(self.tmp_dir, f"{self.run_id or 'run'}-{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise OSError(e.errno, f"{e.strerror} (writing {len(data)} bytes)", path) from e
        return tmp


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(path)  # ours, and half written (a full disk): never left as an unreadable manifest
        raise
    os.close(fd)
    return True
