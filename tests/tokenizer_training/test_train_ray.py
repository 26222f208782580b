"""The Ray Train job end to end: one and two workers, resume, evaluation artefacts, and each family's
exported checkpoint loaded by its tokenizer and run through the tokenize job."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.runner.config import TokenizeConfig
from pipeline.runner.job import run_tokenize
from pipeline.sources.sample_corpus import write_sample_corpus
from pipeline.tokenizer_training.config import TokenizerTrainConfig
from pipeline.tokenizer_training.train import fit
from pipeline.tokenizers import load_tokenizer
from pipeline.var.checkpointing import read_jsonl
from tests.tokenizer_training.test_forward import GQ_TINY, GSQ_TINY, VAR_TINY

pytestmark = pytest.mark.usefixtures("fresh_ray")  # see tests/conftest.py


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tt-corpus")
    train = write_sample_corpus(root / "train", num_shards=2, samples_per_shard=4, max_side=96)
    heldout = write_sample_corpus(root / "heldout", num_shards=1, samples_per_shard=3, max_side=96, seed=7)
    return {"train": "::".join(train), "eval": heldout[0], "root": root}


def tiny(shards, tmp_path, **kw) -> TokenizerTrainConfig:
    base = dict(train_shards=shards["train"], eval_shards=shards["eval"], crop_size=32, batch_size=2,
                max_steps=2, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=1, eval_every=2, eval_crops=2,
                storage_path=str(tmp_path / "runs"), threads=1, cpus_per_worker=1.0, max_failures=0)
    base.update(kw)
    return TokenizerTrainConfig(**base)


def tokenize_through_job(tmp_path, shards, family: str, run_dir: str, image_size: int) -> list[dict]:
    out = tmp_path / f"tokens-{family}"
    cfg = TokenizeConfig(input=[shards["eval"]], output=str(out), tokenizer=family,
                         checkpoint=os.path.join(run_dir, "tokenizer.safetensors"),
                         tokenizer_config=os.path.join(run_dir, "tokenizer_config.json"),
                         image_size=image_size, num_actors=1, batch_size=4, progress=False)
    assert run_tokenize(cfg) == 0
    files = sorted((out / "tokens").glob("*.parquet"))
    rows = pq.read_table(files[0]).to_pylist()
    assert rows and all(r["status"] == "ok" and len(r["tokens"]) > 0 for r in rows)
    return rows


def test_var_vqvae_one_worker_evaluates_exports_and_resumes(ray_cluster, shards, tmp_path):
    cfg = tiny(shards, tmp_path, family="var-vqvae", model_config=VAR_TINY, name="var1", restart_dead_codes=1)
    result = fit(cfg)
    assert result.final_step == 2
    run = result.run_dir
    for name in ("train_config.yaml", "metrics.jsonl", "metrics.png", "tokenizer.safetensors", "tokenizer.json",
                 "eval/recon_step0000002.png"):
        assert os.path.exists(os.path.join(run, name)), name
    history = read_jsonl(os.path.join(run, "metrics.jsonl"))
    evals = [r for r in history if r.get("split") == "eval"]
    assert [r["step"] for r in history if r.get("split") == "train"] == [1, 2]
    assert len(evals) == 1 and 0 < evals[0]["eval_psnr"] < 60
    assert len(evals[0]["eval_usage_per_scale"]) == 3 and len(evals[0]["eval_perplexity_per_scale"]) == 3

    desc = json.load(open(os.path.join(run, "tokenizer.json")))
    tok = load_tokenizer("var-vqvae", checkpoint=result.export, config=desc["config"])
    assert tok.patch_nums == (1, 2, 4)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert [g.shape[1:] for g in tok.encode(x).grids] == [(1, 1), (1, 1), (2, 2)]

    # Resume: same storage/name, more steps -> continues at step 3, one continuous log.
    cfg2 = tiny(shards, tmp_path, family="var-vqvae", model_config=VAR_TINY, name="var1", max_steps=3)
    result2 = fit(cfg2)
    assert result2.final_step == 3
    steps = [r["step"] for r in read_jsonl(os.path.join(run, "metrics.jsonl")) if r.get("split") == "train"]
    assert steps == [1, 2, 3]
    resumed = load_tokenizer("var-vqvae", checkpoint=result2.export, config=desc["config"])
    assert resumed.fingerprint() != tok.fingerprint()  # the extra step changed the weights
    # Rerunning a finished run trains nothing and still reports where it stands (the CLI's exit 0)
    again = fit(cfg2)
    assert again.final_step == 3 and again.export == result2.export
    assert load_tokenizer("var-vqvae", checkpoint=again.export, config=desc["config"]).fingerprint() == resumed.fingerprint()
    tokenize_through_job(tmp_path, shards, "var-vqvae", run, image_size=32)


def test_gsq_two_workers_trains_and_tokenizes(ray_cluster, shards, tmp_path):
    cfg = tiny(shards, tmp_path, family="gsq", model_config=GSQ_TINY, name="gsq2", num_workers=2, batch_size=4,
               restart_dead_codes=1)
    result = fit(cfg)
    assert result.final_step == 2
    history = read_jsonl(os.path.join(result.run_dir, "metrics.jsonl"))
    assert [r["step"] for r in history if r.get("split") == "train"] == [1, 2]
    rows = tokenize_through_job(tmp_path, shards, "gsq", result.run_dir, image_size=32)
    assert len(rows[0]["tokens"]) == 16 * 16 * 2  # (32/2)^2 positions x 2 groups


def test_gq_trains_with_the_kl_constraint_and_tokenizes(ray_cluster, shards, tmp_path):
    cfg = tiny(shards, tmp_path, family="gq", model_config=GQ_TINY, name="gq1")
    result = fit(cfg)
    assert result.final_step == 2
    history = read_jsonl(os.path.join(result.run_dir, "metrics.jsonl"))
    train = [r for r in history if r.get("split") == "train"]
    assert all("kl_bits_mean" in r and "lam" in r for r in train)
    rows = tokenize_through_job(tmp_path, shards, "gq", result.run_dir, image_size=32)
    assert len(rows[0]["tokens"]) == 16 * 16 * 2  # 2 sub-vectors of 4 of the 8 latent channels


def test_cli_on_the_offline_photos_then_export_as_a_default(ray_cluster, tmp_path, capsys):
    """`scaletok train-tokenizer --photos-dir` (what `make default-tokenizer` runs), then the
    export that turns the run into the package's default-tokenizer files (here into a temp dir)."""
    from pipeline.cli import main as cli_main
    from pipeline.tokenizer_training.export_default import main as export_main

    photos, runs = tmp_path / "photos", tmp_path / "runs"
    code = cli_main(["train-tokenizer", "--photos-dir", str(photos), "--family", "var-vqvae",
                     "--model-config", "ch=32", "--model-config", "vocab_size=64", "--model-config", "z_channels=8",
                     "--model-config", "v_patch_nums=[1,2,4]", "--crop-size", "64", "--batch-size", "2",
                     "--max-steps", "2", "--warmup-steps", "1", "--eval-crops", "2", "--eval-every", "2",
                     "--ckpt-every", "2", "--log-every", "1", "--threads", "1", "--cpus-per-worker", "1",
                     "--max-failures", "0", "--storage-path", str(runs), "--name", "photos"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out[out.index("{"):])
    assert summary["steps"] == 2 and summary["tokenizer"].endswith("tokenizer.safetensors")
    assert sorted(p.name for p in photos.glob("*.tar")) == ["heldout-000000.tar", "train-000000.tar"]

    assets = tmp_path / "assets"
    assert export_main([str(runs / "photos"), "--command", "make default-tokenizer", "--assets", str(assets)]) == 0
    desc = json.loads((assets / "default_tokenizer.json").read_text())
    assert desc["name"] == "var-vqvae" and desc["trained_steps"] == 2
    assert desc["train_command"] == "make default-tokenizer"
    assert set(desc["measured"]) == {"psnr_64px", "ssim_64px", "psnr_128px", "ssim_128px"}
    assert all(0 < desc["measured"][k] < 60 for k in ("psnr_64px", "psnr_128px"))
    tok = load_tokenizer("var-vqvae", checkpoint=str(assets / "default_tokenizer.safetensors"), config=desc["config"])
    assert tok.patch_nums == (1, 2, 4)
    from safetensors.torch import load_file
    assert all(t.dtype == torch.float16 for t in load_file(str(assets / "default_tokenizer.safetensors")).values()
               if t.is_floating_point())


def test_shards_and_run_on_s3(ray_cluster, s3_server, shards, tmp_path):
    """Training shards read from an S3-protocol server and the run (checkpoints, metrics, the
    exported tokenizer) written to it; a rerun resumes from the S3 checkpoint."""
    fs, opts = s3_server["fs"], s3_server["storage_options"]
    bucket = "scaletok-tt"
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    train = []
    for local in shards["train"].split("::"):
        name = os.path.basename(local)
        fs.put(local, f"{bucket}/train/{name}")
        train.append(f"s3://{bucket}/train/{name}")
    fs.put(shards["eval"], f"{bucket}/heldout/{os.path.basename(shards['eval'])}")
    cfg = tiny(shards, tmp_path, family="var-vqvae", model_config=VAR_TINY, name="s3run",
               train_shards="::".join(train), eval_shards=f"s3://{bucket}/heldout/{os.path.basename(shards['eval'])}",
               storage_path=f"s3://{bucket}/runs", storage_options=opts)
    result = fit(cfg)
    assert result.final_step == 2
    for name in ("train_config.yaml", "metrics.jsonl", "tokenizer.safetensors", "tokenizer.json", "metrics.png"):
        assert fs.exists(f"{bucket}/runs/s3run/{name}"), name
    assert any(p.rsplit("/", 1)[-1].startswith("checkpoint_") for p in fs.ls(f"{bucket}/runs/s3run"))
    again = fit(tiny(shards, tmp_path, family="var-vqvae", model_config=VAR_TINY, name="s3run", max_steps=3,
                     train_shards="::".join(train), eval_shards=cfg.eval_shards,
                     storage_path=f"s3://{bucket}/runs", storage_options=opts))
    assert again.final_step == 3
    steps = [json.loads(line)["step"] for line in fs.cat_file(f"{bucket}/runs/s3run/metrics.jsonl").decode().splitlines()
             if json.loads(line).get("split") == "train"]
    assert steps == [1, 2, 3]
