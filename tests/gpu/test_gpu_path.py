"""The GPU path on a real GPU: nvJPEG decode against Pillow, a shard decoded on the device, the
job with --gpu-decode and bf16, and --batch-size auto against GPU memory.

Deselected by default (`-m 'not gpu'` in pyproject); `make test-gpu PYTHON=...` runs them on a
machine with CUDA torch (and torchvision for the nvJPEG tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from pipeline.runner.batch_probe import choose_batch_size  # noqa: E402
from pipeline.runner.build import build_tokenizer, plan_job  # noqa: E402
from pipeline.runner.job import run_tokenize  # noqa: E402
from pipeline.runner.shard_task import process_shard  # noqa: E402
from pipeline.sinks.writer import OutputLayout  # noqa: E402
from pipeline.sources.device_decode import nvjpeg_decoder, pillow_raw_decoder  # noqa: E402
from pipeline.sources.listing import Shard  # noqa: E402
from pipeline.tokenizers import load_tokenizer  # noqa: E402
from pipeline.images import PreprocessConfig  # noqa: E402
from tests.job.conftest import VAR_CONFIG, var_config  # noqa: E402
from tests.job.corpus import encode, photo, write_tar  # noqa: E402


def nvjpeg():
    pytest.importorskip("torchvision", reason="nvJPEG comes with torchvision")
    return nvjpeg_decoder("cuda")


def jpegs() -> list[bytes]:
    out = [encode(photo(name, side), quality=q, subsampling=s)
           for name, side, q, s in (("astronaut", 512, 95, 0), ("coffee", 400, 85, 2), ("rocket", 333, 75, 1))]
    out.append(encode(photo("chelsea", 300).convert("L")))
    out.append(encode(photo("astronaut", 256), progressive=True))
    return out


def test_nvjpeg_decodes_like_pillow():
    datas = jpegs()
    ours = nvjpeg()(datas)
    ref = pillow_raw_decoder()(datas)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert isinstance(a, torch.Tensor) and a.is_cuda and a.dtype == torch.uint8, (i, a)
        assert a.shape == b.shape, i
        diff = (a.cpu().int() - b.int()).abs().float()
        assert diff.mean() < 1.5, (i, float(diff.mean()))  # IDCT/upsampling differences only


def test_one_broken_jpeg_does_not_fail_its_batch():
    datas = jpegs()[:3]
    datas.insert(1, datas[0][: len(datas[0]) // 3])
    out = nvjpeg()(datas)
    assert isinstance(out[1], Exception) or (isinstance(out[1], torch.Tensor) and out[1].ndim == 3)
    assert all(isinstance(t, torch.Tensor) for i, t in enumerate(out) if i != 1)


def _shard(tmp_path: Path) -> Shard:
    members = []
    for i, data in enumerate(jpegs() + [encode(photo("coffee", 200), "PNG")]):
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        members += [(f"s{i:02d}.{ext}", data), (f"s{i:02d}.cls", str(i).encode())]
    return Shard(url=write_tar(tmp_path / "gpu.tar", members), name="gpu")


def test_a_shard_decoded_on_the_device(tmp_path, var_tokenizer_json):
    decoder = nvjpeg()
    shard = _shard(tmp_path)
    rows = {}
    for name, dec in (("nvjpeg", decoder), ("pillow", pillow_raw_decoder("cuda"))):
        spec, _ = plan_job(var_config([shard.url], tmp_path / name, var_tokenizer_json, gpu_decode=True,
                                      gpus_per_actor=1))
        layout = OutputLayout(spec.output)
        layout.makedirs()
        result = process_shard(shard, build_tokenizer(spec, "cuda"), spec, layout, device_decoder=dec)
        assert result.ok and result.device_decode_s > 0, result.error
        rows[name] = pq.read_table(tmp_path / name / "tokens" / "gpu.parquet").to_pylist()
    assert [r["status"] for r in rows["nvjpeg"]] == ["ok"] * 6
    assert [(r["height"], r["width"]) for r in rows["nvjpeg"]] == [(r["height"], r["width"]) for r in rows["pillow"]]
    assert rows["nvjpeg"][5]["tokens"] == rows["pillow"][5]["tokens"]  # the PNG: Pillow in both


def test_job_with_gpu_decode_and_bf16_is_reproducible(ray_cluster, corpus_pattern, var_tokenizer_json, tmp_path):
    nvjpeg()
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        cfg = var_config([corpus_pattern], out, var_tokenizer_json, gpu_decode=True, gpus_per_actor=1,
                         precision="bf16", channels_last=True)
        assert run_tokenize(cfg) == 0
    stats = json.loads((outs[0] / "_stats.json").read_text())
    assert stats["totals"]["ok"] == stats["totals"]["samples"] == 12
    assert all(a["device"] == "cuda" for a in stats["this_run"]["per_actor"])
    files = [{p.name: p.read_bytes() for p in sorted((o / "tokens").glob("*.parquet"))} for o in outs]
    assert files[0] == files[1] and len(files[0]) == 3


def test_auto_batch_fills_gpu_memory_within_the_budget():
    tok = load_tokenizer("var-vqvae", None, VAR_CONFIG, precision="bf16", device="cuda")
    tok.preprocess_config = PreprocessConfig(size=256)
    choice = choose_batch_size(tok, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), None, None, max_batch=512)
    budget = 0.8 * torch.cuda.get_device_properties(0).total_memory
    assert choice.batch >= 8, choice.describe()
    assert all(s.peak_bytes is not None for s in choice.steps if s.fits)
    assert all(s.peak_bytes <= budget for s in choice.steps if s.fits)
