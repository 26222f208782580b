"""The tokenize job on a local Ray: real var-vqvae end to end, determinism across actor counts,
every bad input in its own shard, resume, refusal of a foreign output, variants, superset."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import UsageError
from pipeline.runner.job import OutputConflict, run_tokenize
from pipeline.sinks.schema import decode_metadata
from pipeline.runner.verify import verify_output
from pipeline.sources.tar_stream import iter_samples
from pipeline.tokenizers import load_tokenizer
from pipeline.tokenizers.base import MultiScaleTokens
from tests.job.conftest import VAR_CONFIG, VAR_PATCH_NUMS, tiny_config
from tests.job.corpus import EXPECTED

COLUMNS = ["key", "shard", "label", "status", "error", "height", "width", "height_padded", "width_padded",
           "tokens", "scale_shapes", "meta"]


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "tokens").glob("*.parquet"))}


def test_var_vqvae_end_to_end(var_reference, corpus_dir, corpus_pattern):
    out = var_reference
    names = [f"sample-{i:06d}" for i in range(3)]
    assert sorted(files_of(out)) == [f"{n}.parquet" for n in names]
    table = pq.read_table(out / "tokens" / "sample-000000.parquet")
    assert table.column_names == COLUMNS
    assert str(table.schema.field("tokens").type) == "list<element: uint16>"
    meta = decode_metadata(table.schema)
    for key in ("schema_version", "tokenizer", "fingerprint", "patch_nums", "vocab_size", "groups", "preprocess",
                "precision", "version", "job_config", "tokenizer_config"):
        assert key in meta, key
    assert meta["tokenizer"] == "var-vqvae" and meta["patch_nums"] == VAR_PATCH_NUMS and meta["vocab_size"] == 256
    assert pq.ParquetFile(out / "tokens" / "sample-000000.parquet").metadata.row_group(0).column(0).compression == "ZSTD"

    # Rows are the tar's samples, in order, and the tokens are what the tokenizer gives directly.
    samples = list(iter_samples(str(corpus_dir / "sample-000000.tar")))
    assert table.column("key").to_pylist() == [s.key for s in samples]
    assert set(table.column("status").to_pylist()) == {"ok"}
    tok = load_tokenizer("var-vqvae", config=VAR_CONFIG)
    tok.preprocess_config.size = 64
    image = Image.open(io.BytesIO(next(m.data for e, m in samples[0].members.items() if e in ("jpg", "png"))))
    direct = tok.encode(tok.preprocess([image]), patch_nums=VAR_PATCH_NUMS).flat()[0].numpy()
    row = table.slice(0, 1).to_pylist()[0]
    assert np.array_equal(np.asarray(row["tokens"]), direct)
    assert row["scale_shapes"] == [1, 1, 2, 2, 3, 3, 4, 4] and len(row["tokens"]) == 30
    assert (row["height"], row["width"]) == (image.height, image.width)
    assert (row["height_padded"], row["width_padded"]) == (64, 64)
    assert json.loads(row["meta"]) and row["label"] is not None
    # The stored tokens decode back through the same tokenizer.
    grids = MultiScaleTokens.from_flat(__import__("torch").as_tensor(np.asarray(row["tokens"], np.int64))[None],
                                       [(1, 1), (2, 2), (3, 3), (4, 4)], VAR_PATCH_NUMS)
    assert tok.decode(grids).shape == (1, 3, 64, 64)

    manifest = json.loads((out / "_manifest" / "sample-000000.json").read_text())
    assert manifest["rows"] == manifest["ok"] == len(samples) and manifest["failed"] == 0
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["totals"]["ok"] == 12 and stats["failed_shards"] == {}
    assert 0 < stats["codebook"]["used_codes"] <= 256 and stats["codebook"]["perplexity"] > 1
    assert stats["per_shard"]["sample-000000"]["perplexity"] > 1
    report = verify_output(str(out), [corpus_pattern])
    assert report.clean, report.format()


def test_readable_by_pandas_duckdb_and_ray_data(var_reference, ray_cluster):
    import duckdb
    import pandas as pd
    import ray

    paths = sorted(str(p) for p in (var_reference / "tokens").glob("*.parquet"))
    df = pd.read_parquet(paths[0])
    assert len(df) == 4 and len(df["tokens"].iloc[0]) == 30
    n, ok = duckdb.sql(f"SELECT count(*), sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) "
                       f"FROM read_parquet('{var_reference}/tokens/*.parquet')").fetchall()[0]
    assert (n, ok) == (12, 12)
    assert duckdb.sql(f"SELECT len(tokens) FROM read_parquet('{paths[0]}') LIMIT 1").fetchall()[0][0] == 30
    ds = ray.data.read_parquet(str(var_reference / "tokens"))
    assert ds.count() == 12
    assert len(ds.take(1)[0]["tokens"]) == 30


def test_same_bytes_whatever_the_actor_count_and_rerun_skips(ray_cluster, corpus_pattern, tmp_path):
    a, b = tmp_path / "one", tmp_path / "three"
    assert run_tokenize(tiny_config([corpus_pattern], a, num_actors=1)) == 0
    assert run_tokenize(tiny_config([corpus_pattern], b, num_actors=3, batch_size=4)) == 0
    assert files_of(a) == files_of(b) and len(files_of(a)) == 3
    before = {p: p.stat().st_mtime_ns for p in (a / "tokens").glob("*.parquet")}
    assert run_tokenize(tiny_config([corpus_pattern], a, num_actors=1)) == 0
    stats = json.loads((a / "_stats.json").read_text())
    assert stats["this_run"]["shards_committed"] == 0 and stats["this_run"]["shards_skipped"] == 3
    assert before == {p: p.stat().st_mtime_ns for p in (a / "tokens").glob("*.parquet")}


def test_every_bad_input_in_its_own_shard(ray_cluster, bad_shards, tmp_path):
    out = tmp_path / "out"
    missing_url = str(Path(bad_shards["bad-label"]).parent / "bad-does-not-exist.tar")
    inputs = list(bad_shards.values())
    # A missing input is refused before Ray starts, naming it; nothing is written.
    with pytest.raises(UsageError, match=f"input {missing_url}: does not exist"):
        run_tokenize(tiny_config(inputs + [missing_url], out, num_actors=2, max_shard_retries=1))
    assert not out.exists()
    rc = run_tokenize(tiny_config(inputs, out, num_actors=2, max_shard_retries=1))
    assert rc == 1  # a shard that is not a tar could not be read at all
    stats = json.loads((out / "_stats.json").read_text())
    assert sorted(stats["failed_shards"]) == ["bad-notatar"]
    assert "2 attempts failed" in stats["failed_shards"]["bad-notatar"]
    for name, expected in EXPECTED.items():
        table = pq.read_table(out / "tokens" / f"{name}.parquet").to_pylist()
        got = [(r["key"], r["status"]) for r in table]
        if name == "bad-corrupt":
            assert got[0] == expected[0] and got[1][1] == "corrupt_tar" and got[1][0].startswith("<corrupt_tar")
        else:
            assert got == expected, name
        for r in table:
            assert (r["status"] == "ok") == (r["error"] is None) == bool(r["tokens"]), (name, r["key"])
    rows = {r["key"]: r for r in pq.read_table(out / "tokens" / "bad-modes.parquet").to_pylist()}
    assert all(r["height"] == 43 and r["width"] == 64 for r in rows.values())  # CMYK/16-bit/grey/palette/alpha
    exif = pq.read_table(out / "tokens" / "bad-exif.parquet").to_pylist()[0]
    assert (exif["height"], exif["width"]) == (96, 64)  # stored landscape, upright portrait
    dotted = pq.read_table(out / "tokens" / "bad-dotted.parquet").to_pylist()
    assert [r["label"] for r in dotted] == [7, 8]
    bomb = pq.read_table(out / "tokens" / "bad-bomb.parquet").to_pylist()[0]
    assert "bomb" in bomb["error"]
    report = verify_output(str(out), inputs)
    assert sorted(report.problems["missing"]) == ["bad-notatar: not committed"]
    assert len(report.ok) == len(EXPECTED)


def test_resume_does_only_the_rest_and_foreign_output_is_refused(ray_cluster, corpus_pattern, tmp_path):
    out = tmp_path / "out"
    assert run_tokenize(tiny_config([corpus_pattern], out)) == 0
    reference = files_of(out)
    # A run stopped halfway: one shard never committed, another stopped between data and manifest.
    os.unlink(out / "_manifest" / "sample-000001.json")
    os.unlink(out / "_manifest" / "sample-000002.json")
    os.unlink(out / "tokens" / "sample-000002.parquet")
    report = verify_output(str(out), [corpus_pattern])
    assert report.problems["partial"] and report.problems["missing"]
    assert run_tokenize(tiny_config([corpus_pattern], out)) == 0
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["this_run"]["shards_committed"] == 2 and stats["this_run"]["shards_skipped"] == 1
    assert files_of(out) == reference
    assert verify_output(str(out), [corpus_pattern]).clean

    other = tiny_config([corpus_pattern], out, tokenizer_config=None)
    other_cfg_path = tmp_path / "tok.json"
    other_cfg_path.write_text(json.dumps({"seed": 1}))
    other.tokenizer_config = str(other_cfg_path)
    with pytest.raises(OutputConflict, match="another job.*--overwrite"):
        run_tokenize(other)
    assert files_of(out) == reference
    other.overwrite = True
    assert run_tokenize(other) == 0
    assert files_of(out) != reference and len(files_of(out)) == 3


def test_variants_and_scale_superset(ray_cluster, corpus_dir, tmp_path):
    shard = str(corpus_dir / "sample-000000.tar")
    out = tmp_path / "var"
    assert run_tokenize(tiny_config([shard], out, variants=["hflip"], num_actors=1,
                                    patch_nums=[4], scale_superset=True)) == 0
    table = pq.read_table(out / "tokens" / "sample-000000.parquet")
    assert table.column_names == COLUMNS + ["variant"]
    rows = table.to_pylist()
    assert [r["variant"] for r in rows] == ["orig", "hflip"] * 4
    assert decode_metadata(table.schema)["patch_nums"] == [1, 2, 3, 4]
    for orig, flipped in zip(rows[::2], rows[1::2]):
        assert orig["key"] == flipped["key"] and orig["scale_shapes"] == [1, 1, 2, 2, 3, 3, 4, 4]
        start = 0
        for k in (1, 2, 3, 4):  # the flipped image's grid is the mirrored grid (area pooling is symmetric)
            g = np.asarray(orig["tokens"][start:start + k * k]).reshape(k, k)
            f = np.asarray(flipped["tokens"][start:start + k * k]).reshape(k, k)
            if k in (1, 2, 4):
                assert np.array_equal(g[:, ::-1], f)
            start += k * k
    manifest = json.loads((out / "_manifest" / "sample-000000.json").read_text())
    assert manifest["rows"] == 8 and manifest["samples"] == 4 and manifest["ok"] == 4
    assert verify_output(str(out), [shard]).clean


def test_a_full_cluster_fails_the_job_clearly_instead_of_hanging(corpus_pattern, tmp_path):
    """Ray keeps an actor it cannot place pending forever; the job gives up after
    --actor-start-timeout-s, reports every shard as not done, and exits non-zero.

    On a Ray of its own (a subprocess): filling the session's shared cluster on purpose would
    disturb later tests (Ray Train's resource coordinator keeps state across runs)."""
    script = f"""
import json, sys, time, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.2",
         logging_level="ERROR", log_to_driver=False)
hog = ray.remote(num_cpus=2)(type("Hog", (), {{"ping": lambda self: 1}})).remote()
ray.get(hog.ping.remote())          # placed: nothing is left for a 1-CPU tokenizer actor
from pipeline.runner.job import run_tokenize
from tests.job.conftest import tiny_config
cfg = tiny_config([{corpus_pattern!r}], {str(tmp_path / "out")!r}, num_actors=1, cpus_per_actor=1,
                  actor_start_timeout_s=3)
start = time.perf_counter()
code = run_tokenize(cfg)
print(json.dumps({{"code": code, "seconds": time.perf_counter() - start}}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["code"] == 1 and result["seconds"] < 60, result
    assert "no tokenizer actor was placed and started within 3 s" in run.stdout
    assert not list((tmp_path / "out" / "_manifest").glob("*.json"))
