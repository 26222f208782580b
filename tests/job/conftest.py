"""Fixtures of the tokenize-job tests: small corpora and a shared reference run of var-vqvae."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Ray workers import the test tokenizer module by name: the repository root must be importable in
# this process and, through PYTHONPATH inherited by the raylet, in every worker.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

from pipeline.runner.config import TokenizeConfig
from pipeline.sources.sample_corpus import write_sample_corpus
from tests.job.corpus import write_bad_shards

TINY_MODULE = "tests.job.tiny_tokenizer"
VAR_CONFIG = {"ch": 32, "vocab_size": 256, "z_channels": 32}
VAR_PATCH_NUMS = [1, 2, 3, 4]


def tiny_config(inputs, output, **kw) -> TokenizeConfig:
    kw.setdefault("num_actors", 2)
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    return TokenizeConfig(input=list(inputs), output=str(output), tokenizer="tiny-pool",
                          tokenizer_module=TINY_MODULE, **kw)


def var_config(inputs, output, tokenizer_config_path, **kw) -> TokenizeConfig:
    kw.setdefault("num_actors", 1)
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    return TokenizeConfig(input=list(inputs), output=str(output), tokenizer="var-vqvae",
                          tokenizer_config=str(tokenizer_config_path), image_size=64,
                          patch_nums=list(VAR_PATCH_NUMS), **kw)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """3 shards x 4 real photos (scikit-image crops), long side <= 96 px."""
    out = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(out, num_shards=3, samples_per_shard=4, max_side=96)
    return out


@pytest.fixture(scope="session")
def corpus_pattern(corpus_dir):
    return str(corpus_dir / "sample-{000000..000002}.tar")


@pytest.fixture(scope="session")
def bad_shards(tmp_path_factory):
    return write_bad_shards(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="session")
def var_tokenizer_json(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("tokcfg") / "var.json"
    path.write_text(json.dumps(VAR_CONFIG))
    return path


@pytest.fixture(scope="session")
def var_reference(ray_cluster, corpus_pattern, var_tokenizer_json, tmp_path_factory):
    """One local run of the real var-vqvae on the sample corpus; other tests compare bytes to it."""
    from pipeline.runner.job import run_tokenize

    out = tmp_path_factory.mktemp("var-ref")
    rc = run_tokenize(var_config([corpus_pattern], out, var_tokenizer_json, num_actors=1))
    assert rc == 0
    return out
