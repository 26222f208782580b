"""The determinism audit: `scaletok verify OUT --reencode FRACTION`.

Re-encodes a seeded sample of the committed ok rows with the job's own tokenizer, rebuilt from
OUT/_job.json on *this* machine, through the job's own path (tar stream -> decode -> image
policy -> encode), and reports per scale the share of tokens identical to the stored ones. Run it
on another GPU type, or after a bf16 job, to see what the hardware does to the tokens;
`--min-agreement X` turns it into a gate.

The sample is chosen per row from (seed, shard, key), so it is the same whatever the number of
shards or the order they are read in. Only original rows are compared (variants are encoded from
the same image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from pipeline.runner.build import build_tokenizer
from pipeline.runner.config import JobSpec
from pipeline.runner.encode_batch import encode_batch
from pipeline.runner.recon_audit import seeded_u64
from pipeline.runner.shard_task import batched, prepare_sample
from pipeline.sinks.arrow_io import read_table
from pipeline.sinks.manifest import read_committed_set
from pipeline.sinks.schema import ORIGINAL_VARIANT
from pipeline.sinks.writer import OutputLayout
from pipeline.runner.output import replan_inputs
from pipeline.sources.inputs import iter_shard_samples
from pipeline.sources.listing import Shard

AUDIT_BATCH = 16


@dataclass
class ScaleAgreement:
    scale: int              # 1-based, small to large
    grid: tuple[int, int]   # of the first sampled row (native policies differ per row)
    values: int = 0         # codes (x groups) or latent values compared
    identical: int = 0

    @property
    def share(self) -> float:
        return self.identical / self.values if self.values else 1.0


@dataclass
class AuditReport:
    output: str
    rows: int = 0
    rows_identical: int = 0
    scales: list[ScaleAgreement] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)   # sampled keys no longer found in their tar

    @property
    def min_share(self) -> float:
        return min((s.share for s in self.scales), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rows_identical": self.rows_identical, "missing": self.missing,
                "scales": [{"scale": s.scale, "grid": list(s.grid), "values": s.values, "identical": s.identical,
                            "share": round(s.share, 6)} for s in self.scales]}

    def format(self) -> str:
        lines = [f"re-encoded {self.rows} sampled rows of {self.output}: {self.rows_identical} identical in every token"]
        for s in self.scales:
            lines.append(f"  scale {s.scale:2d} ({s.grid[0]}x{s.grid[1]}): {100 * s.share:7.3f} % of "
                         f"{s.values} values identical")
        if self.missing:
            lines.append(f"  {len(self.missing)} sampled rows not found in their input any more: {self.missing[:3]}")
        return "\n".join(lines)


def sampled(seed: int, shard: str, key: str, fraction: float) -> bool:
    return seeded_u64(seed, shard, key) < fraction * 2 ** 64


def spec_from_record(record: dict[str, Any], output: str, storage_options: dict[str, Any] | None) -> JobSpec:
    """The JobSpec that rebuilds the job's tokenizer and image path from OUT/_job.json."""
    rebuild = record.get("rebuild")
    if not rebuild:
        raise ValueError(f"{output}/_job.json does not record how to rebuild the tokenizer (written by an "
                         f"older scaletok); rerun the job once with this version to record it")
    return JobSpec(
        tokenizer=record["tokenizer"], checkpoint=rebuild["checkpoint"], tokenizer_config=rebuild["tokenizer_config"],
        tokenizer_module=rebuild["tokenizer_module"], preprocess=rebuild["preprocess"],
        precision=rebuild["precision"], patch_nums=tuple(rebuild["patch_nums"]), tile_size=rebuild["tile_size"],
        overlap=rebuild["overlap"], variants=(), max_image_pixels=int(rebuild["max_image_pixels"]),
        max_member_bytes=int(rebuild["max_member_bytes"]), batch_size=AUDIT_BATCH, decode_threads=2,
        row_group_rows=0, output=output, storage_options=dict(storage_options or {}),
        jpeg_draft=bool(rebuild.get("jpeg_draft")), fingerprint=record["fingerprint"],
        parquet_columns=rebuild.get("parquet_columns"),
        tokenizer_fingerprint=record["tokenizer_fingerprint"],
        metadata={"latent_dtype": rebuild["latent_dtype"]} if rebuild.get("latent_dtype") else {})


def reencode_audit(output: str, fraction: float, storage_options: dict[str, Any] | None = None, seed: int = 0,
                   inputs: list[str] | None = None, device: str = "cpu") -> AuditReport:
    """`inputs`: the job's input patterns (default: those of OUT/config.yaml). Pre-signed URLs must
    be given again: no signature is ever recorded."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--reencode takes a fraction in (0, 1], got {fraction}")
    layout = OutputLayout(output, storage_options)
    committed = read_committed_set(layout)
    spec = spec_from_record(committed.record, output, storage_options)
    tok = build_tokenizer(spec, device)
    if tok.fingerprint() != spec.tokenizer_fingerprint:
        raise ValueError(f"this machine builds a different tokenizer (tokenizer fingerprint {tok.fingerprint()} vs "
                         f"the job's {spec.tokenizer_fingerprint}): are the checkpoint and config files the same?")
    spec = spec.replace(vocab_size=int(tok.vocab_size))
    shards = job_input_shards(layout, committed.record, inputs, storage_options)
    report = AuditReport(output=output)
    for name in committed.manifests:
        stored = _sampled_rows(layout, name, fraction, seed, committed.manifests[name])
        if stored and name in shards:
            _compare_shard(tok, spec, shards[name], stored, report)
        elif stored:
            report.missing += [f"{name}/{k} (shard not in the input)" for k in stored]
    return report


def job_input_shards(layout: OutputLayout, record: dict[str, Any], inputs: list[str] | None,
                     storage_options: dict[str, Any] | None) -> dict[str, Shard]:
    """The job's shards by name, planned as the job planned them (recorded images per shard and
    Parquet columns)."""
    if not inputs:
        try:
            inputs = (yaml.safe_load(layout.read_bytes(layout.join("config.yaml"))) or {}).get("input")
        except FileNotFoundError:
            inputs = None
    if not inputs:
        raise ValueError(f"{layout.url} records no input patterns; pass --input")
    return {s.name: s for s in replan_inputs(record, inputs, storage_options).shards}


def _sampled_rows(layout: OutputLayout, shard: str, fraction: float, seed: int,
                  manifest: dict[str, Any]) -> dict[str, tuple[np.ndarray, list[int]]]:
    # Checked against its manifest: agreement measured on rotten bits would blame the tokenizer.
    table = read_table(layout.fs, layout.data_path(shard), columns=None, manifest=manifest)
    keys = table.column("key").to_pylist()
    status = table.column("status").to_pylist()
    variants = table.column("variant").to_pylist() if "variant" in table.column_names else [ORIGINAL_VARIANT] * len(keys)
    out = {}
    for i, (key, st, variant) in enumerate(zip(keys, status, variants)):
        if st == "ok" and variant == ORIGINAL_VARIANT and sampled(seed, shard, key, fraction):
            tokens = table.column("tokens")[i].values.to_numpy(zero_copy_only=False)
            out[key] = (tokens, table.column("scale_shapes")[i].as_py())
    return out


def _compare_shard(tok: Any, spec: JobSpec, source: Shard,
                   stored: dict[str, tuple[np.ndarray, list[int]]], report: AuditReport) -> None:
    shard = source.name
    samples = iter_shard_samples(source, spec.storage_options, spec.max_member_bytes, spec.parquet_columns)
    wanted = (raw for raw in samples if raw.key in stored)
    found = set()
    for batch in batched((prepare_sample(tok, spec, raw) for raw in wanted), spec.batch_size):
        for row in encode_batch(tok, spec, batch, shard):
            if row.key not in stored or row.key in found:
                continue
            found.add(row.key)
            if row.status != "ok":
                report.missing.append(f"{shard}/{row.key} ({row.status})")
                continue
            _account(report, stored[row.key], np.asarray(row.tokens), tok)
    report.missing += [f"{shard}/{k}" for k in stored if k not in found and not any(m.startswith(f"{shard}/{k} ")
                                                                                   for m in report.missing)]


def _account(report: AuditReport, stored: tuple[np.ndarray, list[int]], fresh: np.ndarray, tok: Any) -> None:
    tokens, shapes = stored
    per_cell = max(1, len(tokens) // max(1, sum(h * w for h, w in zip(shapes[0::2], shapes[1::2]))))
    report.rows += 1
    report.rows_identical += int(len(tokens) == len(fresh) and np.array_equal(tokens, fresh.astype(tokens.dtype)))
    start = 0
    for k, (h, w) in enumerate(zip(shapes[0::2], shapes[1::2])):
        n = h * w * per_cell
        if len(report.scales) <= k:
            report.scales.append(ScaleAgreement(scale=k + 1, grid=(h, w)))
        a, b = tokens[start:start + n], fresh[start:start + n]
        same = int(np.sum(a == b.astype(a.dtype))) if len(a) == len(b) else 0
        report.scales[k].values += n
        report.scales[k].identical += same
        start += n
