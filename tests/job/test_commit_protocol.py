"""The commit protocol (pipeline/sinks/manifest.py) without Ray: concurrent attempts with the same
or different bytes, a crash after every step followed by a resume, stores without hard links,
foreign and half-written manifests, and what readers see at every point."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import pytest

from pipeline.sinks.manifest import (COMMITTED_OTHER, COMMITTED_SAME, CREATED, CommitConflict, build_manifest,
                                     commit_shard, read_all_manifests, read_committed_set)
from pipeline.sinks.resume import clean_attempts, plan_resume, restore_data
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.listing import Shard

JOB = "f" * 32
STEPS = ("attempt_written", "manifest_created", "published")


class Crash(Exception):
    """Stands for the process dying right after a step."""


def layout_at(path, run_id="run1") -> OutputLayout:
    layout = OutputLayout(str(path), run_id=run_id)
    layout.makedirs()
    (path / "_job.json").write_text(json.dumps({"fingerprint": JOB}))
    return layout


def manifest_for(layout: OutputLayout, shard: str, data: bytes, fingerprint: str = JOB) -> dict:
    return build_manifest(shard=shard, input_url=f"/in/{shard}.tar", data=data, rows=1, status_counts={"ok": 1},
                          samples=1, fingerprint=fingerprint, tokenizer_fingerprint="t" * 32,
                          histogram=np.arange(8), duration_s=0.1, attempt=0, attempt_id=layout.new_attempt_id(),
                          worker={}, labels={"min": 3, "max": 3, "count": 1})


def attempt(layout: OutputLayout, shard: str, data: bytes, on_step=None) -> str:
    return commit_shard(layout, shard, data, manifest_for(layout, shard, data), on_step=on_step)


def settled_state(root) -> dict:
    """What a finished output holds: data files, manifests' checksums, leftover attempt files."""
    tokens = {p.name: p.read_bytes() for p in (root / "tokens").glob("*.parquet")}
    manifests = {p.name: json.loads(p.read_text())["sha256"] for p in (root / "_manifest").glob("*.json")}
    return {"tokens": tokens, "sha": manifests, "attempts": sorted(p.name for p in (root / "_attempts").iterdir())}


def test_concurrent_attempts_same_bytes_commit_once(tmp_path):
    layout = layout_at(tmp_path / "out")
    results = []
    threads = [threading.Thread(target=lambda: results.append(attempt(layout, "x", b"same bytes")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted([CREATED] + [COMMITTED_SAME] * 7)
    assert layout.read_bytes(layout.data_path("x")) == b"same bytes"
    assert os.listdir(layout.attempt_dir) == [] and os.listdir(layout.tmp_dir) == []
    assert read_committed_set(layout).manifests.keys() == {"x"}


def test_concurrent_attempts_with_different_bytes_publish_only_the_winner(tmp_path):
    """bf16 / another GPU type: every attempt encodes other bytes. One manifest wins; the data
    file readers glob holds exactly its bytes; the others count as done, with other bytes."""
    layout = layout_at(tmp_path / "out")
    results: dict[bytes, str] = {}
    barrier = threading.Barrier(6)

    def run(i: int) -> None:
        data = f"encoding number {i}".encode()
        barrier.wait()
        results[data] = attempt(layout, "x", data)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [data for data, outcome in results.items() if outcome == CREATED]
    assert len(winners) == 1 and sorted(results.values()).count(COMMITTED_OTHER) == 5
    manifest = read_all_manifests(layout)["x"]
    published = layout.read_bytes(layout.data_path("x"))
    assert published == winners[0] and hashlib.sha256(published).hexdigest() == manifest["sha256"]
    assert os.listdir(layout.attempt_dir) == []


def test_a_late_attempt_never_replaces_committed_data(tmp_path):
    """The old protocol wrote the data file before the manifest: an attempt that had found no
    manifest could overwrite the data after another attempt committed. Now it cannot."""
    layout = layout_at(tmp_path / "out")
    late = manifest_for(layout, "x", b"late bytes")  # planned before the other attempt committed
    assert attempt(layout, "x", b"first bytes") == CREATED
    assert commit_shard(layout, "x", b"late bytes", late) == COMMITTED_OTHER
    assert layout.read_bytes(layout.data_path("x")) == b"first bytes"
    assert read_all_manifests(layout)["x"]["sha256"] == hashlib.sha256(b"first bytes").hexdigest()


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_after_any_step_is_invisible_or_repaired(tmp_path, step):
    clean_root, crash_root = tmp_path / "clean", tmp_path / "crash"
    clean = layout_at(clean_root)
    assert attempt(clean, "x", b"the bytes") == CREATED and attempt(clean, "y", b"other shard") == CREATED

    crashed = layout_at(crash_root)
    assert attempt(crashed, "y", b"other shard") == CREATED

    def die(name: str) -> None:
        if name == step:
            raise Crash(name)

    with pytest.raises(Crash):
        attempt(crashed, "x", b"the bytes", on_step=die)
    # Readers see the shard whole or not at all.
    seen = read_committed_set(crashed)
    assert set(seen.manifests) in ({"y"}, {"x", "y"})
    if "x" in seen.manifests:
        assert crashed.read_bytes(crashed.data_path("x")) == b"the bytes"
    # Resume: plan, publish what is committed, redo the rest, clean up.
    resumed = OutputLayout(str(crash_root), run_id="run2")
    shards = [Shard(url=f"/in/{n}.tar", name=n) for n in ("x", "y")]
    plan = plan_resume(resumed, shards, JOB)
    repaired, lost = restore_data(resumed, sorted(plan.damaged))
    assert lost == [] and repaired == (["x"] if step == "manifest_created" else [])
    for shard in plan.todo:
        assert attempt(resumed, shard.name, b"the bytes") == CREATED
    assert [s.name for s in plan.todo] == (["x"] if step == "attempt_written" else [])
    clean_attempts(resumed, JOB)
    assert settled_state(crash_root)["tokens"] == settled_state(clean_root)["tokens"]
    assert settled_state(crash_root)["sha"] == settled_state(clean_root)["sha"]
    # The crashed attempt's file of an uncommitted shard is removed once the shard is committed.
    assert settled_state(crash_root)["attempts"] == []


def test_a_losing_attempt_publishes_a_dead_winners_data(tmp_path):
    layout = layout_at(tmp_path / "out")

    def die_after_manifest(name: str) -> None:
        if name == "manifest_created":
            raise Crash(name)

    with pytest.raises(Crash):
        attempt(layout, "x", b"winner", on_step=die_after_manifest)
    assert not os.path.exists(layout.data_path("x"))
    assert attempt(layout, "x", b"loser") == COMMITTED_OTHER
    assert layout.read_bytes(layout.data_path("x")) == b"winner"


def test_commit_without_hard_links_is_still_exclusive(tmp_path, monkeypatch):
    """Filesystems without hard links (some FUSE/SMB mounts) make os.link fail with EPERM; the
    commit falls back to an O_EXCL create and stays exactly once."""
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted", dst)

    monkeypatch.setattr(os, "link", no_links)
    layout = layout_at(tmp_path / "out")
    path = layout.manifest_path("y")
    assert layout.create_if_absent(path, b"one") is True
    assert layout.create_if_absent(path, b"two") is False
    assert layout.read_bytes(path) == b"one" and os.listdir(layout.tmp_dir) == []
    assert attempt(layout, "x", b"data") == CREATED and attempt(layout, "x", b"data") == COMMITTED_SAME


def test_foreign_or_half_written_manifests_are_conflicts(tmp_path):
    layout = layout_at(tmp_path / "out")
    assert attempt(layout, "x", b"data") == CREATED
    other = manifest_for(layout, "x", b"data", fingerprint="0" * 32)
    with pytest.raises(CommitConflict, match="another job"):
        commit_shard(layout, "x", b"data", other)
    with open(layout.manifest_path("z"), "wb") as f:
        f.write(b'{"fingerprint": "f", "sha')
    with pytest.raises(CommitConflict, match="unreadable"):
        attempt(layout, "z", b"data")
    assert layout.read_bytes(layout.data_path("x")) == b"data"


def test_committed_set_ignores_and_names_everything_else(tmp_path):
    root = tmp_path / "out"
    layout = layout_at(root)
    for name in ("a", "b", "c", "gone"):
        assert attempt(layout, name, name.encode()) == CREATED
    (root / "tokens" / "interrupted.parquet").write_bytes(b"no manifest")       # data without manifest
    foreign = manifest_for(layout, "f", b"f", fingerprint="0" * 32)
    assert commit_shard(layout, "f", b"f", foreign) == CREATED                   # another job's shard
    os.unlink(layout.data_path("c"))                                            # committed, data lost
    (root / "_inputs.json").write_text(json.dumps({"shards": ["a", "b", "c", "f", "interrupted"]}))
    seen = read_committed_set(layout)
    assert list(seen.manifests) == ["a", "b"]
    assert seen.uncommitted == ["interrupted"] and seen.foreign == ["f"]
    assert seen.unpublished == ["c"] and seen.orphans == ["gone"]
    assert seen.manifests["a"]["labels"] == {"min": 3, "max": 3, "count": 1}
    for word in ("uncommitted", "another job fingerprint", "no longer in the job's input", "without their data"):
        assert word in seen.ignored()
