"""What an operator reads about a tokenize job, without Ray: the summary's wording, the config's
refusals (one message per flag), and the metadata's `scale_grids`, which must be the grids the
rows really hold (checked by tokenizing real photos through the actors' own code path)."""

from __future__ import annotations

import pytest

from pipeline.runner.build import GRIDS_PER_ROW, build_tokenizer, plan_job
from pipeline.runner.config import TokenizeConfig
from pipeline.runner.encode_batch import encode_batch
from pipeline.runner.progress import format_summary
from pipeline.runner.shard_task import prepare_sample
from pipeline.sources.listing import expand_shards
from pipeline.sources.tar_stream import iter_samples
from tests.job.conftest import VAR_CONFIG


def stats_with(per_actor, never_ready=0, startup_errors=()):
    return {"shards": 2, "failed_shards": {}, "codebook": None,
            "totals": {"shards_committed": 2, "samples": 8, "ok": 8, "failed": 0, "status_counts": {"ok": 8}},
            "this_run": {"shards_committed": 2, "shards_skipped": 0, "images": 8, "wall_s": 4.0,
                         "images_per_s": 2.0, "actors": len(per_actor), "shard_attempts_failed": 0,
                         "actor_deaths": 0, "per_actor": per_actor, "actors_never_ready": never_ready,
                         "actor_startup_errors": list(startup_errors)}}


def actor(shards, images, utilisation):
    return {"pid": 7, "host": "h", "device": "cpu", "shards": shards, "images": images,
            "utilisation": utilisation, "batch_probe": None}


def test_summary_says_what_an_idle_or_failing_actor_did():
    text = format_summary(stats_with([actor(2, 8, 0.97), actor(0, 0, 0.99), actor(0, 0, 0.0)]))
    lines = text.splitlines()
    assert "2 shards, 8 images, busy 97%" in lines[3]
    assert lines[4].endswith("no shard committed (busy 99% on attempts that failed)")
    assert lines[5].endswith("no shard committed")
    assert "busy 0%" not in text
    assert all(line == line.rstrip() for line in lines)


def test_summary_gives_a_reason_for_actors_that_never_became_ready():
    text = format_summary(stats_with([actor(1, 4, 0.9)], never_ready=1))
    assert text.splitlines()[-1] == "  1 actor still starting when the job ended (not needed)"
    assert "on 1 actor" not in text and ", 1 actor, 0 failed attempts, 0 actor deaths" in text
    failed = format_summary(stats_with([actor(1, 4, 0.9)], never_ready=2, startup_errors=["OOM on n1"]))
    assert failed.splitlines()[-1] == "  2 actors never became ready: OOM on n1"


@pytest.mark.parametrize("flags,message", [
    ({"num_actors": 0}, "--num-actors must be >= 1, got 0"),
    ({"max_batch_size": 0}, "--max-batch-size must be >= 1, got 0"),
    ({"max_shard_retries": -1}, "--max-shard-retries must be >= 0, got -1"),
])
def test_each_bad_count_flag_gets_its_own_message(flags, message):
    with pytest.raises(ValueError) as err:
        TokenizeConfig(input=["x.tar"], output="o", tokenizer="gq", **flags).validate()
    text = str(err.value)
    assert message in text
    others = {"--num-actors", "--max-batch-size", "--max-shard-retries"} - {message.split()[0]}
    assert not any(flag in text for flag in others), text


@pytest.fixture(scope="module")
def var_json(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("tok") / "var.json"
    path.write_text(json.dumps(VAR_CONFIG))
    return str(path)


def rows_of(cfg: TokenizeConfig, corpus_pattern: str):
    """Token rows of the first shard, made as an actor makes them."""
    spec, _ = plan_job(cfg)
    tok = build_tokenizer(spec)
    shard = expand_shards([corpus_pattern])[0]
    items = [prepare_sample(tok, spec, raw) for raw in iter_samples(shard.url)]
    return spec, encode_batch(tok, spec, items, shard.name)


@pytest.mark.parametrize("size,policy", [(128, "center-crop"), (64, "resize")])
def test_metadata_scale_grids_are_the_grids_rows_hold(corpus_pattern, var_json, tmp_path, size, policy):
    cfg = TokenizeConfig(input=[corpus_pattern], output=str(tmp_path), tokenizer="var-vqvae",
                         tokenizer_config=var_json, image_size=size, image_policy=policy, patch_nums=[1, 2, 3, 4])
    spec, rows = rows_of(cfg, corpus_pattern)
    grids = spec.metadata["scale_grids"]
    assert spec.metadata["patch_nums"] == [1, 2, 3, 4]
    assert len(grids) == 4 and grids[-1] == [size // 16, size // 16]  # the last scale is the latent
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) >= 3
    for row in ok:  # the photos have other sizes and aspect ratios: the policy evens them out
        assert [row.scale_shapes[i:i + 2] for i in range(0, len(row.scale_shapes), 2)] == grids


def test_native_policy_says_grids_vary_per_row(corpus_pattern, var_json, tmp_path):
    cfg = TokenizeConfig(input=[corpus_pattern], output=str(tmp_path), tokenizer="var-vqvae",
                         tokenizer_config=var_json, image_policy="native", max_side=96, patch_nums=[1, 2, 3])
    spec, rows = rows_of(cfg, corpus_pattern)
    assert spec.metadata["scale_grids"] == GRIDS_PER_ROW
    assert len({tuple(r.scale_shapes) for r in rows if r.status == "ok"}) > 1  # it really varies
