"""The token Parquet schema: the contract between the tokenize job and everything that reads tokens.

One row per sample (and per augmentation variant of an ok sample, with `--variants`):

  key string            the sample's WebDataset key (dots kept)
  shard string          the input shard's name (basename without .tar)
  label int32           the .cls member, null when absent
  status string         "ok" or an error kind (see pipeline.sources.decode / tar_stream)
  error string          null when ok
  height, width int32   the original (EXIF-upright) image size; null when it could not be decoded
  height_padded, width_padded int32   the canvas that was encoded (after crop/resize/padding);
                        continuous tokenizers: the content size the latents cover (see below)
  tokens list<uint16>   all scales flattened small -> large, row-major inside a scale; grouped
                        codes keep a position's G codes adjacent; list<int32> when vocab > 65536;
                        continuous tokenizers: list<halffloat> (or list<float>, see below)
  scale_shapes list<int32>  [h0, w0, h1, w1, ...] of the grids `tokens` concatenates
  meta string           the .json member's text, null when absent
  variant string        only with --variants: "orig", "hflip", "vflip", "crop0", "crop0+hflip", ...
                        (every sample has one "orig" row; see `variant_names` for the row order)
  crop_box list<int32>  only with --variants crop:K: [left, top, right, bottom] of the row's crop in
                        the image resized to shorter side round(resize_ratio * size) (the "orig"
                        row: the centre crop; "cropI": random crop I); a flip applies after the crop
Failed rows have empty `tokens` and `scale_shapes`.

Continuous tokenizers (ViTok's NaFlex latents) use the same columns, so every reader finds an
image's data in one place whatever the family:
  tokens        the latent values, float16 (`--latent-dtype float32`: float32), position-major
                like grouped codes: the `latent_channels` values of a grid cell are adjacent,
                cells in raster order, so len(tokens) = rows * cols * latent_channels
  scale_shapes  [rows, cols] of this image's latent grid (NaFlex keeps the aspect ratio, so the
                grid differs per image; the canvas is rows*latent_patch x cols*latent_patch)
  height_padded, width_padded  the content size in pixels inside that grid (after the token-budget
                resize): what the decoder crops its output to
Key-value metadata adds continuous=true, latent_channels, latent_dtype ("float16" | "float32")
and latent_patch (pixels per latent cell); vocab_size is 0, and manifests carry no codebook.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = "1"
UINT16_VOCAB_LIMIT = 65536
METADATA_PREFIX = "scaletok."
ORIGINAL_VARIANT = "orig"
FLIP_VARIANTS = ("hflip", "vflip")
CROP_VARIANT = "crop"      # `crop:K` in --variants; its rows are named crop0 .. crop{K-1}
LATENT_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


@dataclass
class TokenRow:
    key: str
    shard: str
    status: str = "ok"
    error: str | None = None
    label: int | None = None
    height: int | None = None
    width: int | None = None
    height_padded: int | None = None
    width_padded: int | None = None
    tokens: np.ndarray | None = None
    scale_shapes: list[int] = field(default_factory=list)
    meta: str | None = None
    variant: str = ORIGINAL_VARIANT
    crop_box: tuple[int, int, int, int] | None = None


def parse_variants(requested: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """--variants entries -> (flips in the order asked, number of random crops K of `crop:K`).
    Raises ValueError on anything else."""
    flips: list[str] = []
    crops = 0
    for item in requested:
        if item == ORIGINAL_VARIANT:
            continue
        if item in FLIP_VARIANTS:
            flips += [item] if item not in flips else []
        elif item.startswith(CROP_VARIANT + ":") and item[len(CROP_VARIANT) + 1:].isdigit():
            if crops:
                raise ValueError(f"give crop:K once, got {list(requested)}")
            crops = int(item[len(CROP_VARIANT) + 1:])
            if crops < 1:
                raise ValueError(f"crop:K needs K >= 1, got {item!r}")
        else:
            raise ValueError(f"unknown variant {item!r}; known: {', '.join(FLIP_VARIANTS)}, {CROP_VARIANT}:K")
    return tuple(flips), crops


def variant_names(flips: Sequence[str], crops: int) -> list[tuple[int, str | None, str]]:
    """The rows an ok sample gets, in row order, as (view, flip, name): view 0 is the policy's image
    ("orig"), view i >= 1 the random crop i-1 ("crop{i-1}"); each view is followed by its flips."""
    out = []
    for view in range(1 + crops):
        base = ORIGINAL_VARIANT if view == 0 else f"{CROP_VARIANT}{view - 1}"
        out.append((view, None, base))
        out += [(view, flip, flip if view == 0 else f"{base}+{flip}") for flip in flips]
    return out


def is_crop_variant(name: str | None) -> bool:
    """A row of a random crop (flipped or not), as opposed to the policy's own image."""
    return bool(name) and name.startswith(CROP_VARIANT) and name[len(CROP_VARIANT):len(CROP_VARIANT) + 1].isdigit()


def token_dtype(vocab_size: int) -> pa.DataType:
    return pa.uint16() if 0 < vocab_size <= UINT16_VOCAB_LIMIT else pa.int32()


def latent_dtype(name: str) -> pa.DataType:
    if name not in LATENT_DTYPES:
        raise ValueError(f"latent dtype must be one of {sorted(LATENT_DTYPES)}, got {name!r}")
    return LATENT_DTYPES[name]


def value_dtype(vocab_size: int, metadata: dict[str, Any] | None = None) -> pa.DataType:
    """The element type of `tokens`: integer codes, or latents when the metadata says continuous
    (the metadata is the file's own description, so the column type follows from it)."""
    metadata = metadata or {}
    if metadata.get("continuous"):
        return latent_dtype(metadata.get("latent_dtype", "float16"))
    return token_dtype(vocab_size)


def token_schema(vocab_size: int, with_variant: bool = False, metadata: dict[str, Any] | None = None) -> pa.Schema:
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height_padded", pa.int32()),
        pa.field("width_padded", pa.int32()),
        pa.field("tokens", pa.list_(value_dtype(vocab_size, metadata))),
        pa.field("scale_shapes", pa.list_(pa.int32())),
        pa.field("meta", pa.string()),
    ]
    if with_variant:
        fields.append(pa.field("variant", pa.string(), nullable=False))
    if any(is_crop_variant(v) for v in (metadata or {}).get("variants") or ()):
        fields.append(pa.field("crop_box", pa.list_(pa.int32())))  # the file's variants say it has crops
    return pa.schema(fields, metadata=encode_metadata(metadata or {}))


def encode_metadata(values: dict[str, Any]) -> dict[bytes, bytes]:
    """{'tokenizer': 'var-vqvae'} -> {b'scaletok.tokenizer': b'"var-vqvae"'}; values are JSON."""
    return {(METADATA_PREFIX + k).encode(): json.dumps(v, sort_keys=True, separators=(",", ":")).encode()
            for k, v in sorted(values.items())}


def decode_metadata(schema: pa.Schema) -> dict[str, Any]:
    out = {}
    for k, v in (schema.metadata or {}).items():
        name = k.decode()
        if name.startswith(METADATA_PREFIX):
            out[name[len(METADATA_PREFIX):]] = json.loads(v.decode())
    return out


def build_table(rows: Sequence[TokenRow], schema: pa.Schema) -> pa.Table:
    """Rows in the order given (the tar order) -> an Arrow table with `schema`."""
    tok_type = schema.field("tokens").type.value_type
    columns: dict[str, pa.Array] = {
        "key": _text([r.key for r in rows]),
        "shard": _text([r.shard for r in rows]),
        "label": pa.array([r.label for r in rows], pa.int32()),
        "status": _text([r.status for r in rows]),
        "error": _text([r.error for r in rows]),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height_padded": pa.array([r.height_padded for r in rows], pa.int32()),
        "width_padded": pa.array([r.width_padded for r in rows], pa.int32()),
        "tokens": _list_array([r.tokens if r.tokens is not None else np.zeros(0) for r in rows], tok_type),
        "scale_shapes": _list_array([np.asarray(r.scale_shapes) for r in rows], pa.int32()),
        "meta": _text([r.meta for r in rows]),
    }
    if "variant" in schema.names:
        columns["variant"] = pa.array([r.variant for r in rows], pa.string())
    if "crop_box" in schema.names:
        columns["crop_box"] = pa.array([list(r.crop_box) if r.crop_box is not None else None for r in rows],
                                       pa.list_(pa.int32()))
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _text(values: list[str | None]) -> pa.Array:
    """A string column. Text that is not valid Unicode (surrogate escapes of undecodable bytes, e.g.
    a non-UTF-8 member name inside an error message) is stored with those bytes as `\\xNN`, so
    one odd name never costs its shard. Keys arrive escaped losslessly already (tar_stream.escape_name)."""
    try:
        return pa.array(values, pa.string())
    except (UnicodeEncodeError, pa.ArrowException):
        return pa.array([None if v is None else safe_text(v) for v in values], pa.string())


def safe_text(text: str) -> str:
    try:
        return text.encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "backslashreplace")


def _list_array(values: Sequence[np.ndarray], value_type: pa.DataType) -> pa.Array:
    """One list per row, built from offsets + one flat buffer (no per-element Python objects)."""
    np_type = value_type.to_pandas_dtype()
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(v, dtype=np_type).ravel() for v in values]) if values else np.zeros(0, np_type)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat.astype(np_type, copy=False), value_type))
