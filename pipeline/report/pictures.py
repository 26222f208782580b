"""Images for the report: stored tokens decoded back (input vs reconstruction at every scale) and
samples from a training run. The tokenizer is the one named in the Parquet metadata, rebuilt
with the same config, preprocessing and precision, and must have the recorded fingerprint."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.report.collect import JobOutput
from pipeline.sinks.arrow_io import open_parquet
from pipeline.sources.decode import decode_sample
from pipeline.sources.tar_stream import iter_samples
from pipeline.tokenizers import load_tokenizer
from pipeline.tokenizers.base import MultiScaleTokens
from pipeline.tokenizers.preprocess import PreprocessConfig
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
    tok = load_tokenizer(metadata["tokenizer"], checkpoint, metadata.get("tokenizer_config"),
                         precision=metadata.get("precision", "fp32"))
    tok.preprocess_config = PreprocessConfig(**metadata["preprocess"])
    recorded = metadata.get("fingerprint")
    if recorded and tok.fingerprint() != recorded:
        raise PictureUnavailable(
            f"the tokenizer rebuilt from the Parquet metadata (checkpoint {checkpoint or 'none: seeded weights'}) has "
            f"fingerprint {tok.fingerprint()}, the tokens were made with {recorded}; pass --checkpoint")
    return tok


def _first_ok_rows(job: JobOutput, count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in job.data_files:
        for batch in open_parquet(job.layout.fs, path).iter_batches(batch_size=max(64, 4 * count), use_threads=False):
            for row in batch.to_pylist():
                if row["status"] == "ok" and row.get("variant") in (None, "orig"):
                    rows.append(row)
                    if len(rows) == count:
                        return rows
    return rows


def _input_images(job: JobOutput, rows: list[dict[str, Any]], storage_options: dict[str, Any] | None):
    """The original images of `rows`, read again from the input shards their manifests name."""
    wanted: dict[str, set[str]] = {}
    for row in rows:
        manifest = job.manifests.get(row["shard"]) or {}
        if not manifest.get("input"):
            raise PictureUnavailable(f"the manifest of shard {row['shard']} does not name its input")
        wanted.setdefault(manifest["input"], set()).add(row["key"])
    found = {}
    for url, keys in wanted.items():
        try:
            for raw in iter_samples(url, storage_options):
                if raw.key in keys:
                    sample = decode_sample(raw)
                    if sample.ok:
                        found[raw.key] = sample.image
                    if keys <= found.keys():
                        break
        except (OSError, ValueError) as e:
            raise PictureUnavailable(f"cannot read the input shard {url}: {e}") from e
    missing = [r["key"] for r in rows if r["key"] not in found]
    if missing:
        raise PictureUnavailable(f"input images not found for keys {missing[:5]}")
    return [found[r["key"]] for r in rows]


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
    labels = [f"{h}x{w}" for h, w in zip(first[0::2], first[1::2])][:columns]
    # Rows with fewer scales (other aspect ratios) repeat their last reconstruction.
    per_scale = [[decoded[i][min(k, len(decoded[i]) - 1)] for i in range(len(rows))] for k in range(columns)]
    return scale_grid(originals, per_scale, labels, cell=96)


def training_samples(run_dir: str, per_class: int = 4, classes: int = 2,
                     storage_options: dict[str, Any] | None = None) -> Image.Image:
    """A grid of class-conditional samples from the run's newest checkpoint (one row per class)."""
    from pipeline.var import load_trained
    from pipeline.var.sampling import image_grid, sample

    model = load_trained(run_dir, storage_options=storage_options)
    labels = torch.tensor([c % model.num_classes for c in range(classes) for _ in range(per_class)])
    result = sample(model, len(labels), labels, seed=0)
    return image_grid(result.images, ncols=per_class)


def describe_metadata(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    keys = ("tokenizer", "fingerprint", "patch_nums", "vocab_size", "groups", "preprocess", "precision", "version")
    return [(k, json.dumps(metadata[k]) if not isinstance(metadata[k], str) else metadata[k])
            for k in keys if k in metadata]
