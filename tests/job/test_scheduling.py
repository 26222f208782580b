"""Resume planning: a shard is done iff its manifest exists with the job's fingerprint (and its
data is published), decided from two listings and the manifests' fingerprints
(benchmarks/scheduling.py times it at 100 000)."""

from __future__ import annotations

import json

import numpy as np

from pipeline.sinks.manifest import build_manifest, read_all_manifests
from pipeline.sinks.resume import manifest_fingerprints, plan_resume
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.listing import Shard

JOB = "f" * 32
OTHER = "0" * 32


def _manifest(name: str, fingerprint: str) -> bytes:
    m = build_manifest(shard=name, input_url=f"/in/{name}.tar", data=b"x",
                       rows=1, status_counts={"ok": 1}, samples=1, fingerprint=fingerprint,
                       tokenizer_fingerprint="t" * 32, histogram=np.arange(64), duration_s=0.1, attempt=0,
                       attempt_id="run-0", worker={"pid": 1, "host": "h", "node": "n", "device": "cpu"})
    return json.dumps(m, indent=1, sort_keys=True).encode()  # as commit_shard writes it


def test_resume_planning_over_2000_manifests(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    layout.makedirs()
    shards = [Shard(url=f"/in/train-{i:06d}.tar", name=f"train-{i:06d}") for i in range(2500)]
    expected_done = set()
    for i, shard in enumerate(shards[:2000]):
        path = tmp_path / "out" / "_manifest" / f"{shard.name}.json"
        if i % 10 == 3:
            path.write_bytes(_manifest(shard.name, OTHER))          # another job's
        elif i % 10 == 7:
            path.write_bytes(_manifest(shard.name, JOB)[:-30])      # cut short: unreadable
        elif i % 10 == 9:
            # written some other way (compact JSON): still read right
            path.write_text(json.dumps({"shard": shard.name, "fingerprint": JOB}))
            expected_done.add(shard.name)
        else:
            path.write_bytes(_manifest(shard.name, JOB))
            expected_done.add(shard.name)
    (tmp_path / "out" / "_manifest" / "orphan.json").write_bytes(_manifest("orphan", JOB))
    published = {name for name in expected_done if int(name[-4:]) % 2 == 0}
    for name in published:
        (tmp_path / "out" / "tokens" / f"{name}.parquet").write_bytes(b"x")

    plan = plan_resume(layout, shards, JOB)
    todo = plan.todo
    assert set(plan.missing) == expected_done - published  # committed, data still to publish
    assert plan.done == len(published)
    assert {s.name for s in shards} - {s.name for s in todo} == expected_done
    assert [s.name for s in todo] == [s.name for s in shards if s.name not in expected_done]  # order kept
    # The same answer as reading every manifest whole.
    full = read_all_manifests(layout)
    assert expected_done == {s.name for s in shards if full.get(s.name, {}).get("fingerprint") == JOB}
    fps = manifest_fingerprints(layout)
    assert fps["orphan"] == JOB and fps["train-000003"] == OTHER and fps["train-000007"] is None
    assert "orphan" not in manifest_fingerprints(layout, [s.name for s in shards])
    assert plan_resume(OutputLayout(str(tmp_path / "empty")), shards[:3], JOB).todo == shards[:3]
