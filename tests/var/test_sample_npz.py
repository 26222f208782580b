"""`scaletok sample --npz`: the ADM evaluation layout, sampled on Ray actors; the same file with one
actor or two, and a rerun redoes only the chunks that are missing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.var import load_var
from pipeline.var.checkpointing import save_checkpoint
from pipeline.var.sample_job import ModelSpec, SampleSettings, chunk_path, plan_chunks, sample_to_npz


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory, small_tokenizer, small_tokenizer_spec):
    """A training checkpoint as `scaletok train` writes it: a tiny random VAR on the fixture tokenizer."""
    model = load_var(None, config={"depth": 1, "embed_dim": 64, "num_heads": 1, "num_classes": 4},
                     tokenizer=small_tokenizer, seed=1, init={"init_head": 1.0, "init_adaln_gamma": 0.5})
    directory = tmp_path_factory.mktemp("run") / "checkpoint_000001"
    record = {**small_tokenizer_spec, "options": {"preprocess": small_tokenizer.describe()["preprocess"],
                                                  "precision": "fp32"},
              "fingerprint": small_tokenizer.fingerprint()}
    save_checkpoint(str(directory), model, None, {"step": 1, "var_config": model.config.to_dict(),
                                                  "tokenizer": record}, [])
    return str(directory)


def test_chunks_are_class_major_and_fixed_size():
    chunks = plan_chunks([3, 7], 3, 4)
    assert [c.labels for c in chunks] == [(3, 3, 3, 7), (7, 7)]
    assert [c.index for c in chunks] == [0, 1]


def test_npz_is_the_same_with_one_or_two_actors_and_resumes(ray_cluster, run_checkpoint, tmp_path):
    spec = ModelSpec(checkpoint=run_checkpoint)
    settings = SampleSettings(cfg=1.5, top_k=20, top_p=0.9, seed=3)
    one, two = str(tmp_path / "one" / "s.npz"), str(tmp_path / "two" / "s.npz")
    first = sample_to_npz(spec, [0, 1, 2], 3, settings, one, chunk_size=4, num_actors=1, say=lambda m: None)
    second = sample_to_npz(spec, [0, 1, 2], 3, settings, two, chunk_size=4, num_actors=2, say=lambda m: None)
    assert (first["actors"], second["actors"]) == (1, 2) and first["chunks"] == 3
    a, b = np.load(one), np.load(two)
    assert sorted(a.files) == ["arr_0", "arr_1", "tokens"]
    assert a["arr_0"].shape == (9, 64, 64, 3) and a["arr_0"].dtype == np.uint8  # ADM's layout: NHWC uint8
    assert a["arr_1"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and a["tokens"].shape == (9, 30)
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    assert len({a["tokens"][i].tobytes() for i in range(9)}) > 1  # not one image repeated
    # Resume: a lost chunk (and the joined file) are redone, the chunks on disk are kept as they are.
    kept = os.path.getmtime(chunk_path(one, 0))
    os.remove(chunk_path(one, 1))
    os.remove(one)
    again = sample_to_npz(spec, [0, 1, 2], 3, settings, one, chunk_size=4, num_actors=2, say=lambda m: None)
    assert again["sampled_chunks"] == 1 and os.path.getmtime(chunk_path(one, 0)) == kept
    c = np.load(one)
    for key in a.files:
        assert np.array_equal(a[key], c[key]), key
    # Chunks of other settings are never mixed in.
    with pytest.raises(ValueError, match="settings"):
        sample_to_npz(spec, [0, 1, 2], 3, SampleSettings(seed=4), one, chunk_size=4, say=lambda m: None)
    assert json.load(open(one + ".chunks/settings.json"))["settings"]["seed"] == 3


def test_sample_cli_npz_defaults_to_every_class(ray_cluster, run_checkpoint, tmp_path):
    from pipeline.cli import main

    out = tmp_path / "all.npz"
    assert main(["sample", "--checkpoint", run_checkpoint, "--npz", str(out), "--per-class", "1",
                 "--chunk-size", "3", "--num-actors", "1", "--top-k", "10"]) == 0
    assert np.load(out)["arr_1"].tolist() == [0, 1, 2, 3]  # the model's 4 classes
