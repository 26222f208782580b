"""Parquet files of encoded images (Hugging Face `datasets`' `Image` feature, img2dataset's Parquet
output) -> samples. Each file is one shard; row groups are streamed, a file is never held whole.

Columns, unless given (`--image-column`, `--label-column`, `--key-column`):
- image: the first of IMAGE_COLUMNS present, else the only struct<bytes, path> or binary column.
  A struct<bytes, path> is Hugging Face's `Image` (bytes may be null when the image lives
  elsewhere: that row gets `missing_image`); a binary column holds the encoded bytes.
- label: the first of LABEL_COLUMNS present (an integer column). When the file's Hugging Face
  metadata says it is a `ClassLabel`, its names are the class names and -1 (no label) is null.
- key: the given column, else the image struct's `path`, else the row index (`%08d`).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import filesystem_for
from pipeline.sources.tar_stream import Member, RawSample, escape_name, flag_duplicate

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "fine_label", "class_id")
KEY_COLUMNS = ("__key__", "key")
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pnm")
READ_BATCH_ROWS = 64


@dataclass(frozen=True)
class ParquetColumns:
    image: str
    image_is_struct: bool
    label: str | None = None
    key: str | None = None
    class_label: bool = False       # the label column is a Hugging Face ClassLabel (-1 = no label)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "image_is_struct": self.image_is_struct, "label": self.label,
                "key": self.key, "class_label": self.class_label}


def read_parquet_schema(url: str, storage_options: dict[str, Any] | None = None) -> pa.Schema:
    fs, path = filesystem_for(url, storage_options)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def _is_image_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes", "path"}


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """The `features` that Hugging Face `datasets` stores in the Parquet metadata ({} if none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return (info.get("info") or {}).get("features") or {}


def resolve_columns(schema: pa.Schema, image: str | None = None, label: str | None = None,
                    key: str | None = None) -> ParquetColumns:
    names = schema.names
    for given, what in ((image, "--image-column"), (label, "--label-column"), (key, "--key-column")):
        if given is not None and given not in names:
            raise ValueError(f"{what} {given!r} is not a column of the Parquet input (columns: {', '.join(names)})")
    if image is None:
        usable = [n for n in names if _is_image_struct(schema.field(n).type) or _is_binary(schema.field(n).type)]
        preferred = [n for n in IMAGE_COLUMNS if n in usable]
        if preferred:
            image = preferred[0]
        elif len(usable) == 1:
            image = usable[0]
        else:
            raise ValueError(f"cannot tell which column holds the images (binary or struct<bytes, path> columns: "
                             f"{usable or 'none'}); pass --image-column")
    image_type = schema.field(image).type
    if not (_is_image_struct(image_type) or _is_binary(image_type)):
        raise ValueError(f"--image-column {image!r} is {image_type}, not binary or struct<bytes, path>")
    if label is None:
        label = next((n for n in LABEL_COLUMNS if n in names and pa.types.is_integer(schema.field(n).type)), None)
    elif not pa.types.is_integer(schema.field(label).type):
        raise ValueError(f"--label-column {label!r} is {schema.field(label).type}, not an integer column")
    if key is None:
        key = next((n for n in KEY_COLUMNS if n in names), None)
    feature = hf_features(schema).get(label or "", {})
    return ParquetColumns(image=image, image_is_struct=_is_image_struct(image_type), label=label, key=key,
                          class_label=isinstance(feature, dict) and feature.get("_type") == "ClassLabel")


def class_names(schema: pa.Schema, columns: ParquetColumns) -> list[str] | None:
    feature = hf_features(schema).get(columns.label or "", {})
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def iter_parquet_samples(url: str, storage_options: dict[str, Any] | None, columns: ParquetColumns,
                         max_member_bytes: int, keys_only: bool = False) -> Iterator[RawSample]:
    """One sample per row, in file order; `keys_only` reads no image bytes (verify's recount)."""
    fs, path = filesystem_for(url, storage_options)
    wanted = [c for c in (columns.label, columns.key) if c]
    if keys_only and columns.image_is_struct and not columns.key:
        wanted.append(f"{columns.image}.path")
    elif not keys_only:
        wanted.append(columns.image)
    seen: dict[str, int] = {}
    index = 0
    with fs.open(path, "rb") as f:
        reader = pq.ParquetFile(f)
        for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, columns=sorted(set(wanted)), use_threads=False):
            for row in batch.to_pylist():
                yield flag_duplicate(_sample(row, index, columns, max_member_bytes, keys_only), seen)
                index += 1


def _sample(row: dict[str, Any], index: int, columns: ParquetColumns, limit: int, keys_only: bool) -> RawSample:
    cell = row.get(columns.image)
    image_path = (cell or {}).get("path") if isinstance(cell, dict) else row.get(f"{columns.image}.path")
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    key = row.get(columns.key) if columns.key else (image_path or f"{index:08d}")
    sample = RawSample(key=escape_name(str(key)), index=index)
    label = row.get(columns.label) if columns.label else None
    if label is not None and not (columns.class_label and label < 0):
        sample.members["cls"] = Member("cls", str(label).encode())
    if keys_only:
        return sample
    field = posixpath.splitext(image_path or "")[1][1:].lower()
    field = field if field in IMAGE_FIELDS else "jpg"  # a routing name: Pillow reads the format from the bytes
    if data is None:
        sample.status = "missing_image"
        sample.error = (f"the {columns.image!r} column holds no bytes" +
                        (f" (the image is stored elsewhere: {image_path})" if image_path else ""))
    elif len(data) > limit:
        sample.members[field] = Member(str(key), None, skipped=f"image is {len(data)} bytes, over the limit of {limit}")
    else:
        sample.members[field] = Member(str(key), data)
    return sample
