"""Reading token Parquet files from any fsspec filesystem without Arrow's IO thread pool.

`pq.read_table(fs.open(path))` hands Arrow a Python file object; Arrow reads it with async tasks
on its IO pool, and a task that finishes while the interpreter shuts down frees a Python-owned
buffer without the GIL: the process aborts *after* its work is done ("terminate called without an
active exception", exit -6; apache/arrow#34314). Seen here in ~1 of 25 `scaletok verify` runs
(core dump: `arrow::py::PyBuffer::~PyBuffer` on an IO-pool thread inside `Py_FinalizeEx`).
So the file's bytes are fetched by fsspec, copied into Arrow-owned memory and read through a
BufferReader, which Arrow reads synchronously on the calling thread. Token files are small
(about 1.5 bytes per token), so reading one whole is cheap.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq


def parquet_from_bytes(data: bytes) -> pq.ParquetFile:
    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.ParquetFile(pa.BufferReader(sink.getvalue()))


def open_parquet(fs: Any, path: str) -> pq.ParquetFile:
    """`path` on fsspec filesystem `fs` as a ParquetFile over Arrow memory (see the module doc)."""
    return parquet_from_bytes(fs.cat_file(path))


def read_table(fs: Any, path: str, columns: Sequence[str] | None = None) -> pa.Table:
    return open_parquet(fs, path).read(columns=list(columns) if columns else None, use_threads=False)
