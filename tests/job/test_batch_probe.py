"""`--batch-size auto`: the doubling search, the measurement on the actor's device, and the job
with it (same bytes as a fixed batch, the chosen batch recorded per actor and per shard)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.runner.batch_probe import (ProbeStep, choose_batch_size, pick_batch_size,
                                         probe_input_size)
from pipeline.runner.build import plan_job
from pipeline.runner.config import TokenizeConfig
from pipeline.runner.job import run_tokenize
from pipeline.tokenizers import load_tokenizer
from pipeline.images import PreprocessConfig
from tests.job.conftest import VAR_CONFIG, VAR_PATCH_NUMS, var_config


def table(rates: dict[int, float], oom_from: int | None = None, peak_per_image: int | None = None,
          base: int = 0, superlinear: dict[int, int] | None = None):
    """measure(batch) from a table of img/s; batches >= oom_from do not fit; peak memory is
    base + peak_per_image * batch unless `superlinear` gives it."""
    calls: list[int] = []

    def measure(batch: int) -> ProbeStep:
        calls.append(batch)
        if oom_from is not None and batch >= oom_from:
            return ProbeStep(batch, None, None, "out of memory")
        peak = None if peak_per_image is None else (superlinear or {}).get(batch, base + peak_per_image * batch)
        return ProbeStep(batch, rates[batch], peak, base_bytes=base)

    return measure, calls


def test_stops_at_out_of_memory_and_keeps_the_fastest_that_fit():
    measure, calls = table({1: 10, 2: 19, 4: 35, 8: 60, 16: 100, 32: 180}, oom_from=64)
    choice = pick_batch_size(measure, max_batch=256)
    assert choice.batch == 32 and calls == [1, 2, 4, 8, 16, 32, 64]
    assert "64 does not fit" in choice.reason and "64: out of memory" in choice.describe()


def test_stops_when_doubling_no_longer_pays_and_picks_the_smallest_within_tolerance():
    # 8 -> 16 -> 32 gain 2 % and 1 %: two stalls stop the search; 8 is within 5 % of the best (32).
    measure, calls = table({1: 10, 2: 20, 4: 38, 8: 50, 16: 51, 32: 51.5, 64: 52})
    choice = pick_batch_size(measure, max_batch=256)
    assert calls == [1, 2, 4, 8, 16, 32]
    assert choice.batch == 8 and choice.reason == "throughput stopped growing"


def test_a_slower_larger_batch_is_not_chosen():
    measure, _ = table({1: 10, 2: 30, 4: 20, 8: 15})
    assert pick_batch_size(measure, max_batch=8).batch == 2


def test_memory_budget_measured_and_predicted_and_the_cap():
    rates = {b: 10.0 * b for b in (1, 2, 4, 8, 16, 32)}
    # 100 bytes in use before each batch + 50 per image: batch 16 peaks at 900 (fits 1000), and
    # batch 32 is predicted at 100 + 2 * 800 = 1700, so it is never tried.
    measure, calls = table(rates, peak_per_image=50, base=100)
    choice = pick_batch_size(measure, max_batch=256, memory_budget=1000)
    assert choice.batch == 16 and calls == [1, 2, 4, 8, 16] and "would need ~" in choice.reason
    # Memory that grows faster than the batch: the prediction lets 16 be tried, its measured peak
    # is over the budget, and the choice stays at 8.
    measure, calls = table(rates, peak_per_image=50, base=100, superlinear={16: 1500})
    choice = pick_batch_size(measure, max_batch=256, memory_budget=1000)
    assert choice.batch == 8 and calls[-1] == 16 and "over the" in choice.steps[-1].error
    measure, calls = table(rates)
    assert pick_batch_size(measure, max_batch=6).batch == 4 and calls == [1, 2, 4]


def test_nothing_fits_is_a_clear_error():
    measure, _ = table({}, oom_from=1)
    with pytest.raises(RuntimeError, match="not even one image fits"):
        pick_batch_size(measure)
    with pytest.raises(ValueError, match=">= 1"):
        pick_batch_size(measure, max_batch=0)


def test_probe_size_follows_the_image_policy():
    assert probe_input_size(PreprocessConfig(mode="center-crop", size=64)) == (64, 64)
    assert probe_input_size(PreprocessConfig(mode="native", max_side=96)) == (96, 96)
    with pytest.raises(ValueError, match="--max-side"):
        probe_input_size(PreprocessConfig(mode="native"))


def test_config_accepts_auto_and_numbers_only(tmp_path):
    assert TokenizeConfig(batch_size="auto").auto_batch
    assert TokenizeConfig(batch_size="32").batch_size == 32
    for bad in ("big", 0, 2.5):
        cfg = TokenizeConfig(input=["x.tar"], output=str(tmp_path), tokenizer="var-vqvae", batch_size=bad)
        with pytest.raises(ValueError, match="--batch-size"):
            cfg.validate()
    native = TokenizeConfig(input=["x.tar"], output=str(tmp_path), tokenizer="var-vqvae", batch_size="auto",
                            tokenizer_config=None, image_policy="native", tile_size=64, overlap=16)
    with pytest.raises(ValueError, match="--max-side"):
        plan_job(native)


def test_measured_on_the_cpu_with_a_real_encoder():
    tok = load_tokenizer("var-vqvae", None, VAR_CONFIG)
    tok.preprocess_config = PreprocessConfig(size=32)
    choice = choose_batch_size(tok, tuple(VAR_PATCH_NUMS[:3]), None, None, max_batch=4)
    assert choice.batch in (1, 2, 4)
    assert [s.batch for s in choice.steps][:1] == [1] and all(s.fits for s in choice.steps)
    assert all(s.images_per_s > 0 and s.peak_bytes >= s.base_bytes > 0 for s in choice.steps)


def test_cpu_tokens_do_not_depend_on_the_batch_size():
    # What lets actors that chose different batches write the same bytes (module doc).
    tok = load_tokenizer("var-vqvae", None, VAR_CONFIG)
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole = tok.encode(x, patch_nums=VAR_PATCH_NUMS).flat()
    ones = torch.cat([tok.encode(x[i:i + 1], patch_nums=VAR_PATCH_NUMS).flat() for i in range(8)])
    assert torch.equal(whole.reshape(8, -1), ones.reshape(8, -1))


def test_job_with_auto_batch_writes_the_reference_bytes(var_reference, ray_cluster, corpus_pattern,
                                                        var_tokenizer_json, tmp_path):
    out = tmp_path / "auto"
    cfg = var_config([corpus_pattern], out, var_tokenizer_json, num_actors=2, batch_size="auto", max_batch_size=4)
    assert run_tokenize(cfg) == 0
    files = lambda d: {p.name: p.read_bytes() for p in sorted(Path(d, "tokens").glob("*.parquet"))}
    assert files(out) == files(var_reference) and len(files(out)) == 3
    stats = json.loads((out / "_stats.json").read_text())
    per_actor = stats["this_run"]["per_actor"]
    assert per_actor and all(a["batch_size"] in (1, 2, 4) and "img/s by batch" in a["batch_probe"] for a in per_actor)
    for manifest in (out / "_manifest").glob("*.json"):
        assert json.loads(manifest.read_text())["worker"]["batch_size"] in (1, 2, 4)
