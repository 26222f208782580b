"""`scaletok verify OUT --input PATTERN`: recount every shard against its input tar.

Problems reported (any one makes the exit code non-zero):
  missing    an input shard with no committed manifest (or a manifest whose data file is gone)
  partial    a data file without manifest (interrupted commit), a data file whose checksum or
             row count differs from its manifest, whose original rows do not match the
             samples of the input tar (count and keys, in order), or with rows whose tokens do
             not fill their scale_shapes (codes x groups, or latents x latent_channels)
  stale      a manifest from a different job fingerprint than OUT/_job.json
  orphan     a data file or manifest that belongs to no input shard
  duplicate  a key+variant appearing in more than one `ok` row of a shard
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.sinks.arrow_io import parquet_from_bytes
from pipeline.sinks.manifest import read_all_manifests
from pipeline.sinks.schema import ORIGINAL_VARIANT, decode_metadata
from pipeline.sinks.writer import OutputLayout
from pipeline.runner.output import replan_inputs
from pipeline.sources.inputs import count_shard_samples
from pipeline.sources.tar_stream import UnreadableShard

PROBLEM_KINDS = ("missing", "partial", "stale", "orphan", "duplicate")


@dataclass
class VerifyReport:
    shards: int = 0
    ok: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in PROBLEM_KINDS})

    def add(self, kind: str, message: str) -> None:
        self.problems[kind].append(message)

    @property
    def clean(self) -> bool:
        return not any(self.problems.values())

    def to_dict(self) -> dict[str, Any]:
        return {"shards": self.shards, "ok": len(self.ok), "problems": self.problems, "clean": self.clean}

    def format(self) -> str:
        lines = [f"{len(self.ok)}/{self.shards} shards verified"]
        for kind in PROBLEM_KINDS:
            for message in self.problems[kind]:
                lines.append(f"{kind.upper():9s} {message}")
        lines.append("clean" if self.clean else
                     "NOT clean: " + ", ".join(f"{len(v)} {k}" for k, v in self.problems.items() if v))
        return "\n".join(lines)


def verify_output(output: str, inputs: Iterable[str], storage_options: dict[str, Any] | None = None,
                  check_tars: bool = True) -> VerifyReport:
    layout = OutputLayout(output, storage_options)
    job_path = layout.join("_job.json")
    if not layout.exists(job_path):
        # Nothing to recount against: one refusal, not one "missing" line per input shard.
        if not layout.exists(layout.root):
            raise FileNotFoundError(f"output {output} does not exist")
        raise ValueError(f"output {output} is not a tokenize output (no _job.json)")
    record = json.loads(layout.read_bytes(job_path))
    fingerprint = record["fingerprint"]
    plan = replan_inputs(record, list(inputs), storage_options)
    shards = plan.shards
    report = VerifyReport(shards=len(shards))
    manifests = read_all_manifests(layout)
    data_files = {p.rsplit("/", 1)[-1][: -len(".parquet")] for p in layout.list_dir(layout.tokens_dir, ".parquet")}
    names = {s.name for s in shards}
    for name in sorted(data_files - names):
        report.add("orphan", f"tokens/{name}.parquet belongs to no input shard")
    for name in sorted(set(manifests) - names):
        report.add("orphan", f"_manifest/{name}.json belongs to no input shard")
    for shard in shards:
        problems_before = sum(len(v) for v in report.problems.values())
        _verify_shard(layout, shard, manifests.get(shard.name), shard.name in data_files, fingerprint,
                      report, storage_options, check_tars, plan.columns)
        if sum(len(v) for v in report.problems.values()) == problems_before:
            report.ok.append(shard.name)
    return report


def _verify_shard(layout: OutputLayout, shard, manifest: dict[str, Any] | None, has_data: bool,
                  fingerprint: str, report: VerifyReport, storage_options, check_tars: bool,
                  columns: Any = None) -> None:
    name = shard.name
    if manifest is None:
        if has_data:
            report.add("partial", f"{name}: data file without manifest (commit interrupted; rerun the job)")
        else:
            report.add("missing", f"{name}: not committed")
        return
    if manifest.get("fingerprint") != fingerprint:
        report.add("stale", f"{name}: manifest of job fingerprint {manifest.get('fingerprint')}, "
                             f"not the output's job fingerprint {fingerprint} (_job.json)")
        return
    if not has_data:
        report.add("missing", f"{name}: manifest present but tokens/{name}.parquet is gone")
        return
    data = layout.read_bytes(layout.data_path(name))
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        report.add("partial", f"{name}: data file checksum differs from its manifest")
        return
    table = parquet_from_bytes(data).read(use_threads=False)  # not via Arrow's IO pool: arrow_io.py
    if table.num_rows != manifest.get("rows"):
        report.add("partial", f"{name}: {table.num_rows} rows, manifest says {manifest.get('rows')}")
        return
    keys = table.column("key").to_pylist()
    statuses = table.column("status").to_pylist()
    variants = table.column("variant").to_pylist() if "variant" in table.column_names else [ORIGINAL_VARIANT] * len(keys)
    original_keys = [k for k, v in zip(keys, variants) if v == ORIGINAL_VARIANT]
    seen: set[tuple[str, str]] = set()
    dups = set()
    for k, s, v in zip(keys, statuses, variants):
        if s == "ok":
            if (k, v) in seen:
                dups.add(k)
            seen.add((k, v))
    if dups:
        report.add("duplicate", f"{name}: keys with more than one ok row: {sorted(dups)[:5]}")
    malformed = malformed_rows(table)
    if malformed:
        report.add("partial", f"{name}: {len(malformed)} rows whose tokens do not fill their scale_shapes "
                              f"(keys {[keys[i] for i in malformed[:5]]})")
    if not check_tars:
        return
    try:
        count, tar_keys = count_shard_samples(shard, storage_options, columns)
    except (UnreadableShard, OSError) as e:
        report.add("partial", f"{name}: cannot recount the input tar: {e}")
        return
    if count != len(original_keys):
        report.add("partial", f"{name}: {len(original_keys)} sample rows but the input tar has {count} samples")
    elif tar_keys != original_keys:
        report.add("partial", f"{name}: sample keys differ from the input tar's (order or names)")


def malformed_rows(table: pa.Table) -> list[int]:
    """Rows whose token count is not sum(h*w) over their scale_shapes times the values per
    position (groups for codes, latent_channels for latents), and ok rows without tokens."""
    meta = decode_metadata(table.schema)
    per_position = int(meta.get("latent_channels") or 1) if meta.get("continuous") else int(meta.get("groups") or 1)
    shapes = table.column("scale_shapes").combine_chunks()
    offsets = shapes.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    lengths = np.diff(offsets)
    dims = shapes.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    if (lengths % 2).any():
        return [int(i) for i in np.flatnonzero(lengths % 2)]
    cells = np.concatenate([[0], np.cumsum(dims[0::2] * dims[1::2])])
    expected = (cells[offsets[1:] // 2] - cells[offsets[:-1] // 2]) * per_position
    got = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False)
    got = np.nan_to_num(got.astype(np.float64), nan=0).astype(np.int64)
    ok = np.asarray(table.column("status").to_pylist()) == "ok"
    return [int(i) for i in np.flatnonzero((got != expected) | (ok & (got == 0)))]
