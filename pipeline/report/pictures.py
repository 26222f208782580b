"""Images for the report: stored tokens decoded back (input vs reconstruction at every scale) and
samples from a training run. The tokenizer is the one named in the Parquet metadata, rebuilt
with the same config, preprocessing and precision, and must have the recorded fingerprint. Data
files are read through collect.data_file: whole, and checked against their manifests."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.report.collect import JobOutput, data_file
from pipeline.runner.audit import job_input_shards
from pipeline.sinks.manifest import read_job_record
from pipeline.sinks.reader import row_tokens
from pipeline.sources.decode import decode_sample
from pipeline.sources.inputs import iter_shard_samples
from pipeline.tokenizers import TokenizerMismatch, tokenizer_from_metadata
from pipeline.tokenizers.base import MultiScaleTokens
from pipeline.viz import scale_grid, to_uint8


class PictureUnavailable(RuntimeError):
    """The picture cannot be made faithfully (wrong weights, missing inputs, ...): say why."""


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def job_checkpoint(job: JobOutput) -> str | None:
    """The tokenizer weights the job used, from the config.yaml it saved beside its output."""
    import yaml

    path = job.layout.join("config.yaml")
    if not job.layout.fs.exists(path):
        return None
    return (yaml.safe_load(job.layout.read_bytes(path)) or {}).get("checkpoint")


def rebuild_tokenizer(metadata: dict[str, Any], checkpoint: str | None):
    try:
        return tokenizer_from_metadata(metadata, checkpoint)
    except TokenizerMismatch as e:
        raise PictureUnavailable(f"{e} (--checkpoint)") from e


def _first_ok_rows(job: JobOutput, count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in job.data_files:
        for batch in data_file(job, path).iter_batches(batch_size=max(64, 4 * count), use_threads=False):
            for row in batch.to_pylist():
                if row["status"] == "ok" and row.get("variant") in (None, "orig"):
                    rows.append(row)
                    if len(rows) == count:
                        return rows
    return rows


def _input_images(job: JobOutput, rows: list[dict[str, Any]], storage_options: dict[str, Any] | None):
    """The original images of `rows`, read again from their input shards (planned as the job
    planned them: tars, class-folder slices or Parquet files)."""
    wanted: dict[str, set[str]] = {}
    for row in rows:
        wanted.setdefault(row["shard"], set()).add(row["key"])
    try:
        record = read_job_record(job.layout)
        shards = job_input_shards(job.layout, record, None, storage_options)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise PictureUnavailable(f"cannot tell where the input images are: {e}") from e
    columns = (record.get("rebuild") or {}).get("parquet_columns")
    found = {}
    for name, keys in wanted.items():
        if name not in shards:
            raise PictureUnavailable(f"shard {name} is not in the job's input any more")
        try:
            for raw in iter_shard_samples(shards[name], storage_options, columns=columns):
                if raw.key in keys:
                    sample = decode_sample(raw)
                    if sample.ok:
                        found[(name, raw.key)] = sample.image
                    if all((name, k) in found for k in keys):
                        break
        except (OSError, ValueError) as e:
            raise PictureUnavailable(f"cannot read the input shard {shards[name].display_url}: {e}") from e
    missing = [r["key"] for r in rows if (r["shard"], r["key"]) not in found]
    if missing:
        raise PictureUnavailable(f"input images not found for keys {missing[:5]}")
    return [found[(r["shard"], r["key"])] for r in rows]


def worst_reconstructions(job: JobOutput, worst: list[dict[str, Any]], checkpoint: str | None = None,
                          storage_options: dict[str, Any] | None = None) -> Image.Image:
    """The reconstruction audit's worst rows: the input, and the image decoded at the audited scale."""
    tok = rebuild_tokenizer(job.metadata, checkpoint if checkpoint is not None else job_checkpoint(job))
    rows = []
    for item in worst:
        table = data_file(job, job.layout.data_path(item["shard"])).read(use_threads=False)
        keys = table.column("key").to_pylist()
        variants = table.column("variant").to_pylist() if "variant" in table.column_names else ["orig"] * len(keys)
        index = next((i for i, (k, v) in enumerate(zip(keys, variants)) if k == item["key"] and v == "orig"), None)
        if index is None:
            raise PictureUnavailable(f"row {item['shard']}/{item['key']} is not in its data file")
        rows.append((table, index, item))
    images = _input_images(job, [{"shard": t.column("shard")[i].as_py(), "key": it["key"]} for t, i, it in rows],
                           storage_options)
    originals, recons, labels = [], [], []
    for (table, index, item), image in zip(rows, images):
        tokens = row_tokens(table, index)
        recon = tok.decode(tokens, upto=int(item["scale"]))
        original = to_uint8(tok.preprocess([image]), tok.input_range)[0]
        out = to_uint8(recon, tok.input_range)[0][:original.shape[0], :original.shape[1]]
        originals.append(original)
        recons.append(out)
        labels.append(f"{item['key']}: {item['psnr']:.1f} dB")
    grid = scale_grid(np.stack(originals), [np.stack(recons)], ["after all scales"], cell=112)
    return label_rows(grid, labels)


def reconstruction_grid(job: JobOutput, count: int = 4, checkpoint: str | None = None,
                        storage_options: dict[str, Any] | None = None) -> Image.Image:
    """One row per sample: the encoded input, then the image decoded from scales 1..k for each k."""
    if not job.metadata:
        raise PictureUnavailable("no data file to read tokens from")
    if job.metadata.get("continuous"):
        raise PictureUnavailable("continuous latents have no scales to show; decode rows with "
                                 "pipeline.sinks.reader.row_tokens")
    tok = rebuild_tokenizer(job.metadata, checkpoint if checkpoint is not None else job_checkpoint(job))
    rows = _first_ok_rows(job, count)
    if not rows:
        raise PictureUnavailable("no ok rows")
    images = _input_images(job, rows, storage_options)
    patch_nums = tuple(job.metadata["patch_nums"])
    groups = (int(job.metadata.get("groups") or 1),) if int(job.metadata.get("groups") or 1) > 1 else ()
    # Rows with the same grid shapes and canvas decode together: one decoder pass per scale.
    batches: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        batches.setdefault((tuple(row["scale_shapes"]), row["height_padded"], row["width_padded"]), []).append(i)
    decoded: dict[int, list[np.ndarray]] = {}
    for (flat_shapes, hp, wp), members in batches.items():
        shapes = list(zip(flat_shapes[0::2], flat_shapes[1::2]))
        flat = torch.tensor(np.stack([np.asarray(rows[i]["tokens"], dtype=np.int64) for i in members]))
        tokens = MultiScaleTokens.from_flat(flat.reshape(len(members), -1, *groups), shapes, patch_nums,
                                            image_size=(hp, wp), padded_size=(hp, wp))
        try:
            per_k = [to_uint8(tok.decode(tokens, upto=k), tok.input_range) for k in range(1, len(shapes) + 1)]
        except Exception as e:  # e.g. families that need per-image extras the Parquet does not keep
            raise PictureUnavailable(f"{job.metadata['tokenizer']} cannot decode stored tokens: "
                                     f"{type(e).__name__}: {e}") from e
        for j, i in enumerate(members):
            decoded[i] = [images_k[j] for images_k in per_k]
    originals = [to_uint8(tok.preprocess([image]), tok.input_range)[0] for image in images]
    columns = max(len(d) for d in decoded.values())
    first = rows[0]["scale_shapes"]
    # Scales are numbered from 1 everywhere in the report (the codebook table, these columns).
    labels = [f"{k}: {h}x{w}" for k, (h, w) in enumerate(zip(first[0::2], first[1::2]), start=1)][:columns]
    # Rows with fewer scales (other aspect ratios) repeat their last reconstruction.
    per_scale = [[decoded[i][min(k, len(decoded[i]) - 1)] for i in range(len(rows))] for k in range(columns)]
    return scale_grid(originals, per_scale, labels, cell=96)


def training_samples(run_dir: str, per_class: int = 4, classes: int = 2,
                     storage_options: dict[str, Any] | None = None,
                     class_names: list[str] | None = None) -> tuple[Image.Image, list[str]]:
    """A grid of class-conditional samples from the run's newest checkpoint, one row per class,
    each row labelled with its class; and those labels."""
    from pipeline.var import load_trained
    from pipeline.var.sampling import image_grid, sample

    model = load_trained(run_dir, storage_options=storage_options)
    row_classes = [c % model.num_classes for c in range(classes)]
    labels = torch.tensor([c for c in row_classes for _ in range(per_class)])
    result = sample(model, len(labels), labels, seed=0)
    grid = image_grid(result.images, ncols=per_class)
    factor = max(1, 128 // int(result.images.shape[-2]))  # small tokenizers' images: enlarged to be seen
    if factor > 1:
        grid = grid.resize((grid.width * factor, grid.height * factor), Image.Resampling.NEAREST)
    names = [class_label(c, class_names) for c in row_classes]
    return label_rows(grid, names), names


def class_label(label: int, class_names: list[str] | None) -> str:
    if class_names and 0 <= label < len(class_names):
        return f"class {label}: {class_names[label]}"
    return f"class {label}"


def label_rows(grid: Image.Image, labels: list[str], font_size: int = 14) -> Image.Image:
    """`grid` (rows of equal height) with each row's label written to its left."""
    font = ImageFont.load_default(size=font_size)
    width = 12 + max(int(font.getlength(text)) for text in labels)
    out = Image.new("RGB", (grid.width + width, grid.height), "white")
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    row_height = grid.height / len(labels)
    for i, text in enumerate(labels):
        draw.text((6, int((i + 0.5) * row_height)), text, fill="black", font=font, anchor="lm")
    return out


# (metadata key, what the report calls it). The two fingerprints are named apart: the tokenizer's
# (weights + config + preprocessing + precision) and the job's (the tokenizer's + token settings).
METADATA_ROWS = (("tokenizer", "tokenizer"), ("fingerprint", "tokenizer fingerprint"),
                 ("job_fingerprint", "job fingerprint"), ("patch_nums", "scale schedule (patch_nums)"),
                 ("scale_grids", "grid of each stored scale"), ("vocab_size", "vocabulary size"),
                 ("groups", "codes per position"), ("preprocess", "image policy"), ("precision", "precision"),
                 ("version", "scaletok version"))


def describe_metadata(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, _metadata_text(key, metadata[key])) for key, name in METADATA_ROWS if key in metadata]


def _metadata_text(key: str, value: Any) -> str:
    if key == "scale_grids" and isinstance(value, list):
        return ", ".join(f"{k}: {h}x{w}" for k, (h, w) in enumerate(value, start=1))
    return value if isinstance(value, str) else json.dumps(value)
