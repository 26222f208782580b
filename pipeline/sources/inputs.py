"""What a job's `--input` is, and the one way every shard's samples are read, whatever the layout:

  WebDataset tars      patterns of .tar/.tar.gz/... (braces, globs, '::' lists): one shard per tar
  image Parquet        patterns of .parquet files: one shard per file (image_parquet.py)
  class-folder tree    one directory: virtual shards of `images_per_shard` files (folders.py)

One layout per job. `plan_inputs` lists once, on the driver; `iter_shard_samples` is what an actor
streams and `count_shard_samples` what `verify` recounts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from pipeline.io import filesystem_for, strip_query
from pipeline.sources.folders import (DEFAULT_IMAGES_PER_SHARD, IMAGE_FOLDER_EXTENSIONS, folder_key, folder_shards,
                                      iter_folder_samples, list_folder)
from pipeline.sources.image_parquet import (ParquetColumns, class_names, iter_parquet_samples, read_parquet_schema,
                                            resolve_columns)
from pipeline.sources.listing import (GLOB_CHARS, PARQUET_SUFFIX, TAR_SUFFIXES, Shard, expand_shards,
                                      split_patterns)
from pipeline.sources.tar_stream import DEFAULT_MAX_MEMBER_BYTES, RawSample, iter_samples


@dataclass
class InputPlan:
    shards: list[Shard]
    layout: str                                    # "tar" | "parquet" | "folder"
    class_names: list[str] | None = None           # folder classes, or a ClassLabel's names
    columns: ParquetColumns | None = None          # parquet: where images, labels and keys are
    ignored_files: int = 0                         # folder: files that are not images of a class
    ignored_examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = {"tar": "WebDataset tars", "parquet": "image Parquet files", "folder": "class-folder tree"}[self.layout]
        extra = ""
        if self.class_names is not None:
            extra += f", {len(self.class_names)} classes"
        if self.ignored_files:
            extra += f", {self.ignored_files} non-image files ignored (e.g. {', '.join(self.ignored_examples[:3])})"
        if self.columns is not None:
            extra += (f", image column {self.columns.image!r}, label {self.columns.label!r}, "
                      f"key {self.columns.key or ('image path' if self.columns.image_is_struct else 'row index')!r}")
        count = f"{len(self.shards)} shard{'' if len(self.shards) == 1 else 's'}"
        return f"{count} of {text}{extra}"


def plan_inputs(patterns: str | Iterable[str], storage_options: dict[str, Any] | None = None, *,
                images_per_shard: int = DEFAULT_IMAGES_PER_SHARD, image_column: str | None = None,
                label_column: str | None = None, key_column: str | None = None) -> InputPlan:
    items = split_patterns(patterns)
    if len(items) == 1 and _is_directory(items[0], storage_options):
        listing = list_folder(items[0], storage_options)
        shard_files = [f for f in listing.ignored_examples if f.endswith((*TAR_SUFFIXES, PARQUET_SUFFIX))]
        if not listing.images and shard_files:
            ext = next(s for s in (*TAR_SUFFIXES, PARQUET_SUFFIX) if shard_files[0].endswith(s))
            raise ValueError(f"input {items[0]} is a directory of shard files, not of images: give a pattern "
                             f"such as {items[0].rstrip('/')}/*{ext}")
        if not listing.images:
            raise ValueError(f"input {items[0]}: no images found (extensions {', '.join(IMAGE_FOLDER_EXTENSIONS)}; "
                             f"{listing.ignored} other files)")
        return InputPlan(shards=folder_shards(listing, images_per_shard), layout="folder",
                         class_names=listing.classes or None, ignored_files=listing.ignored,
                         ignored_examples=listing.ignored_examples)
    for item in items:
        if _is_directory(item, storage_options):
            raise ValueError(f"input {item} is a directory: give a class-folder tree as the only --input, "
                             f"or shard files with a pattern such as {item.rstrip('/')}/*.tar")
    shards = expand_shards(items, storage_options)
    kinds = {s.kind for s in shards}
    if len(kinds) > 1:
        raise ValueError("the inputs mix tar and Parquet shards; give one layout per job")
    if kinds == {"parquet"}:
        schema = read_parquet_schema(shards[0].url, storage_options)
        columns = resolve_columns(schema, image_column, label_column, key_column)
        return InputPlan(shards=shards, layout="parquet", columns=columns, class_names=class_names(schema, columns))
    if any(c is not None for c in (image_column, label_column, key_column)):
        raise ValueError("--image-column/--label-column/--key-column apply to Parquet inputs only")
    return InputPlan(shards=shards, layout="tar")


def _is_directory(item: str, storage_options: dict[str, Any] | None) -> bool:
    """A literal (no braces, no globs) URL that is a directory / prefix."""
    if "{" in item or any(c in strip_query(item) for c in GLOB_CHARS):
        return False
    try:
        fs, path = filesystem_for(item, storage_options)
        return bool(fs.isdir(path))
    except Exception:
        return False  # the preflight names what is wrong with it


def iter_shard_samples(shard: Shard, storage_options: dict[str, Any] | None = None,
                       max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                       columns: ParquetColumns | dict[str, Any] | None = None) -> Iterator[RawSample]:
    if shard.kind == "folder":
        return iter_folder_samples(shard, storage_options, max_member_bytes)
    if shard.kind == "parquet":
        return iter_parquet_samples(shard.url, storage_options, _columns(columns), max_member_bytes)
    return iter_samples(shard.url, storage_options, max_member_bytes)


def count_shard_samples(shard: Shard, storage_options: dict[str, Any] | None = None,
                        columns: ParquetColumns | dict[str, Any] | None = None) -> tuple[int, list[str]]:
    """(number of samples, their keys in order), reading no image data where the layout allows."""
    if shard.kind == "parquet":
        keys = [s.key for s in iter_parquet_samples(shard.url, storage_options, _columns(columns), 0, keys_only=True)]
    elif shard.kind == "folder":
        keys = [folder_key(rel) for rel in shard.files]
    else:
        keys = [s.key for s in iter_samples(shard.url, storage_options, max_member_bytes=0)]
    return len(keys), keys


def _columns(columns: ParquetColumns | dict[str, Any] | None) -> ParquetColumns:
    if columns is None:
        raise ValueError("a Parquet shard needs its columns (plan_inputs resolves them)")
    return columns if isinstance(columns, ParquetColumns) else ParquetColumns(**columns)
