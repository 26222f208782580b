"""Fixtures of the VAR tests: the fixture VAR / VQVAE, and token Parquet written to the schema.

The token files hold real tokens of the fixture VQ-VAE (4 scales, 64 px crops of scikit-image
photos, L = 30) so the Ray Train tests run in seconds; they are written with the sink's own schema
helpers, exactly as the tokenize job writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

VAR_DIR = Path(__file__).parent.parent / "fixtures" / "var"
SMALL_PATCH_NUMS = (1, 2, 3, 4)


@pytest.fixture(scope="session")
def var_fixture() -> dict:
    cfg = json.loads((VAR_DIR / "var_small_config.json").read_text())
    arrays = dict(np.load(VAR_DIR / "var_expected.npz"))
    return {"config": cfg, "constructor": cfg["constructor"], "arrays": arrays,
            "checkpoint": VAR_DIR / "var_small.safetensors",
            "tolerances": json.loads((VAR_DIR / "tolerances.json").read_text())}


@pytest.fixture(scope="session")
def vqvae_constructor() -> dict:
    return json.loads((VAR_DIR / "vqvae_small_config.json").read_text())["constructor"]


@pytest.fixture(scope="session")
def fixture_tokenizer(vqvae_constructor):
    from pipeline.tokenizers import load_tokenizer
    return load_tokenizer("var-vqvae", str(VAR_DIR / "vqvae_small.safetensors"), vqvae_constructor)


@pytest.fixture(scope="session")
def small_tokenizer_spec(vqvae_constructor) -> dict:
    """The fixture VQ-VAE weights with a 4-scale schedule (64 px images, 30 tokens)."""
    return {"name": "var-vqvae", "checkpoint": str(VAR_DIR / "vqvae_small.safetensors"),
            "config": {**vqvae_constructor, "v_patch_nums": list(SMALL_PATCH_NUMS)}}


@pytest.fixture(scope="session")
def small_tokenizer(small_tokenizer_spec):
    from pipeline.tokenizers import load_tokenizer
    s = small_tokenizer_spec
    return load_tokenizer(s["name"], s["checkpoint"], s["config"])


def photo_crops(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """n random size x size crops of four scikit-image photos in [-1, 1], label = photo index."""
    from skimage import data as skdata
    from skimage.transform import resize

    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % len(photos)
        img = photos[label]
        short = min(img.shape[:2])
        side = int(rng.integers(min(size * 2, short), short + 1))
        y = int(rng.integers(0, img.shape[0] - side + 1))
        x = int(rng.integers(0, img.shape[1] - side + 1))
        crop = resize(img[y:y + side, x:x + side], (size, size), anti_aliasing=True)  # float in [0, 1]
        images.append(torch.from_numpy(crop).permute(2, 0, 1).float() * 2 - 1)
        labels.append(label)
    return torch.stack(images), np.array(labels)


TEST_JOB = "7e57" * 8  # the job fingerprint of outputs written by these helpers


def write_token_parquet(out_dir: Path, tokenizer, tokens: torch.Tensor, labels: np.ndarray, shard: str,
                        n_failed: int = 1) -> Path:
    """One shard's token Parquet in the tokenize job's schema (plus `n_failed` error rows)."""
    from pipeline.sinks.schema import TokenRow, build_table, token_schema
    from pipeline.sinks.writer import parquet_bytes

    side = 16 * tokenizer.patch_nums[-1]
    shapes = [v for p in tokenizer.patch_nums for v in (p, p)]
    rows = [TokenRow(key=f"{shard}-{i:04d}", shard=shard, label=int(labels[i]), height=side, width=side,
                     height_padded=side, width_padded=side, tokens=tokens[i].numpy(), scale_shapes=shapes)
            for i in range(len(tokens))]
    rows += [TokenRow(key=f"{shard}-bad{i}", shard=shard, status="decode_error", error="truncated image")
             for i in range(n_failed)]
    meta = {"schema_version": "1", "tokenizer": tokenizer.name, "fingerprint": tokenizer.fingerprint(),
            "patch_nums": list(tokenizer.patch_nums), "vocab_size": tokenizer.vocab_size,
            "groups": tokenizer.groups, "preprocess": tokenizer.describe()["preprocess"],
            "precision": tokenizer.precision, "version": "test", "job_config": {},
            "tokenizer_config": tokenizer.describe()["config"]}
    table = build_table(rows, token_schema(tokenizer.vocab_size, metadata=meta))
    return commit_test_shard(out_dir.parent, shard, parquet_bytes(table), rows)


def commit_test_shard(out: Path, shard: str, data: bytes, rows) -> Path:
    """Commit one shard's bytes the way the tokenize job does (manifest, then tokens/), so readers,
    which only read committed shards, see it. The output's job fingerprint is TEST_JOB."""
    from pipeline.sinks.manifest import build_manifest, commit_shard, label_summary
    from pipeline.sinks.writer import OutputLayout

    layout = OutputLayout(str(out))
    layout.makedirs()
    if not (out / "_job.json").exists():
        (out / "_job.json").write_text(json.dumps({"fingerprint": TEST_JOB}))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    manifest = build_manifest(shard=shard, input_url=f"test://{shard}.tar", data=data, rows=len(rows),
                              status_counts=counts, samples=len(rows), fingerprint=TEST_JOB,
                              tokenizer_fingerprint="test", histogram=None, duration_s=0.0, attempt=0,
                              attempt_id=layout.new_attempt_id(), worker={},
                              labels=label_summary(r.label for r in rows if r.status == "ok"))
    commit_shard(layout, shard, data, manifest)
    return Path(layout.data_path(shard))


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory, small_tokenizer) -> Path:
    """OUT/tokens/ with two shards of 24 ok rows + 1 failed row each."""
    out = tmp_path_factory.mktemp("tokens_out")
    images, labels = photo_crops(48, 16 * SMALL_PATCH_NUMS[-1])
    tokens = small_tokenizer.encode(images).flat()
    for s in range(2):
        sl = slice(24 * s, 24 * (s + 1))
        write_token_parquet(out / "tokens", small_tokenizer, tokens[sl], labels[sl], f"shard-{s:05d}")
    return out


@pytest.fixture(scope="session")
def job_token_dir(tmp_path_factory, ray_cluster, small_tokenizer_spec) -> Path:
    """Token Parquet made by the tokenize job (`run_tokenize`) from the bundled sample corpus:
    2 shards x 24 photos, centre-cropped to 64 px, fixture VQ-VAE with 4 scales."""
    from pipeline.runner.config import TokenizeConfig
    from pipeline.runner.job import run_tokenize
    from pipeline.sources.sample_corpus import write_sample_corpus

    root = tmp_path_factory.mktemp("tokenize_job")
    shards = write_sample_corpus(root / "corpus", num_shards=2, samples_per_shard=24, max_side=96)
    config_file = root / "tokenizer.json"
    config_file.write_text(json.dumps(small_tokenizer_spec["config"]))
    cfg = TokenizeConfig(input=[str(s) for s in shards], output=str(root / "out"), tokenizer="var-vqvae",
                         checkpoint=small_tokenizer_spec["checkpoint"], tokenizer_config=str(config_file),
                         image_size=64, num_actors=1, cpus_per_actor=0.5, batch_size=24, progress=False)
    assert run_tokenize(cfg) == 0
    return root / "out"
