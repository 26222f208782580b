"""--gpu-decode's machinery, on the CPU: which images go to the device, EXIF orientation and the
image policy as torch ops (against Pillow), the per-image CPU fallback, the shard path end to end
with Pillow standing in for nvJPEG (same contract: stored orientation, RGB), and the refusals.
nvJPEG itself runs in tests/gpu (make test-gpu) on a machine with a GPU."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps

from pipeline.runner.build import build_tokenizer, plan_job
from pipeline.runner.job import run_tokenize
from pipeline.runner.shard_task import process_shard
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.decode import decode_sample
from pipeline.sources.device_decode import (DeviceJpeg, nvjpeg_decoder, orient, pillow_raw_decoder,
                                            policy_on_device, to_device_tensors)
from pipeline.sources.listing import Shard
from pipeline.sources.tar_stream import Member, RawSample
from pipeline.images import PreprocessConfig, apply_policy, images_to_tensor
from tests.job.conftest import tiny_config
from tests.job.corpus import encode, photo, write_tar

RANGE = (-1.0, 1.0)


def raw(data: bytes, ext: str = "jpg", key: str = "k") -> RawSample:
    return RawSample(key=key, index=0, members={ext: Member(f"{key}.{ext}", data)})


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, quality=92, exif=exif.tobytes())


def test_every_exif_orientation_matches_pillow_exactly():
    image = photo("chelsea", 80)  # not square: a wrong transpose changes the shape
    for orientation in range(1, 9):
        data = with_orientation(image, orientation)
        stored = pillow_raw_decoder()([data])[0]
        upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        ours = orient(stored, orientation).permute(1, 2, 0).numpy()
        assert ours.shape == upright.shape and np.array_equal(ours, upright), orientation


@pytest.mark.parametrize("policy", [PreprocessConfig(size=64), PreprocessConfig(mode="resize", size=48),
                                    PreprocessConfig(mode="native", max_side=50),
                                    PreprocessConfig(size=64, resample="bilinear")])
def test_policy_on_device_is_the_cpu_policy_up_to_the_resize_filter(policy):
    for name, side in (("astronaut", 96), ("coffee", 97), ("rocket", 131)):
        image = photo(name, side)
        cpu = apply_policy(image, policy)
        chw = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        x = policy_on_device(chw, policy, RANGE)
        assert x.shape == (1, 3, *cpu.shape[:2]) and x.dtype == torch.float32
        levels = ((x[0].permute(1, 2, 0) + 1) / 2 * 255).round().numpy()
        diff = np.abs(levels - cpu.astype(np.float64))
        assert diff.mean() < 2.5, (name, policy, diff.mean())  # LANCZOS vs antialiased bicubic
        assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_device_geometry_is_the_pillow_paths_for_odd_sizes():
    # Sizes where truncation and crop-offset rounding matter: the device path must end on the
    # same pixel grid as apply_policy (same resized size, same crop box).
    rng = np.random.default_rng(0)
    for w, h in ((97, 131), (300, 200), (1001, 999), (64, 64), (65, 300)):
        u8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for policy in (PreprocessConfig(size=64), PreprocessConfig(mode="resize", size=48),
                       PreprocessConfig(mode="native", max_side=100)):
            cpu = apply_policy(u8, policy)
            x = policy_on_device(torch.from_numpy(u8).permute(2, 0, 1), policy, RANGE)
            assert tuple(x.shape) == (1, 3, *cpu.shape[:2]), (w, h, policy.mode)
    # No resize needed (already the policy's size): the device path is exact, crop included.
    u8 = rng.integers(0, 256, (72, 90, 3), dtype=np.uint8)  # shorter side 72 = round(64 * 1.125)
    exact = policy_on_device(torch.from_numpy(u8).permute(2, 0, 1), PreprocessConfig(size=64), RANGE)
    assert torch.equal(exact, images_to_tensor([u8], PreprocessConfig(size=64), RANGE))


def test_which_images_wait_for_the_device():
    image = photo("astronaut", 96)
    rotated = decode_sample(raw(with_orientation(photo("rocket", 120), 6)), device_jpeg=True)
    assert rotated.ok and rotated.image is None and rotated.jpeg.orientation == 6
    assert (rotated.width, rotated.height) == (photo("rocket", 120).height, photo("rocket", 120).width)
    grey = decode_sample(raw(encode(image.convert("L"))), device_jpeg=True)
    assert grey.jpeg is not None and grey.jpeg.orientation == 1
    for data, ext in ((encode(image.convert("CMYK")), "jpg"), (encode(image, "PNG"), "png")):
        cpu = decode_sample(raw(data, ext), device_jpeg=True)  # Pillow's colour conversion / not a JPEG
        assert cpu.ok and cpu.jpeg is None and cpu.image.mode == "RGB"
    bomb = decode_sample(raw(encode(image)), max_pixels=1000, device_jpeg=True)
    assert bomb.status == "too_large" and bomb.jpeg is None  # the pixel guard comes first
    broken = decode_sample(raw(b"\xff\xd8\xff\xe0 not really a jpeg"), device_jpeg=True)
    assert broken.status == "decode_error" and broken.jpeg is None


def test_an_image_the_device_refuses_is_decoded_on_the_cpu():
    policy = PreprocessConfig(size=64)
    good, other = encode(photo("coffee", 96)), with_orientation(photo("rocket", 120), 8)
    truncated = good[: len(good) // 2]

    def refuses_the_second(datas):
        out = pillow_raw_decoder()(datas)
        out[1] = RuntimeError("nvjpeg: unsupported")
        return out

    jpegs = [DeviceJpeg(good), DeviceJpeg(other, 8), DeviceJpeg(truncated)]
    got = to_device_tensors(jpegs, refuses_the_second, policy, RANGE, "cpu")
    cpu_path = images_to_tensor([ImageOps.exif_transpose(Image.open(io.BytesIO(other)))], policy, RANGE)
    assert torch.equal(got[1], cpu_path)  # the fallback *is* the CPU path
    assert got[0].shape == (1, 3, 64, 64)
    assert isinstance(got[2], Exception)  # neither the stand-in nor Pillow decodes half a JPEG
    assert to_device_tensors([], refuses_the_second, policy, RANGE, "cpu") == []


def test_a_shard_through_the_device_path(tmp_path):
    members = []
    for i, (name, data) in enumerate([("a", encode(photo("astronaut", 96))),
                                      ("b", with_orientation(photo("rocket", 100), 6)),
                                      ("c", encode(photo("coffee", 90), "PNG")),
                                      ("d", encode(photo("chelsea", 90))[:700])]):
        ext = "png" if name == "c" else "jpg"
        members += [(f"{name}.{ext}", data), (f"{name}.cls", str(i).encode())]
    url = write_tar(tmp_path / "mixed.tar", members)
    shard = Shard(url=url, name="mixed")
    results = {}
    for mode, decoder in (("cpu", None), ("device", pillow_raw_decoder("cpu"))):
        cfg = tiny_config([url], tmp_path / mode, batch_size=4)
        spec, _ = plan_job(cfg)
        layout = OutputLayout(spec.output)
        layout.makedirs()
        result = process_shard(shard, build_tokenizer(spec), spec, layout, device_decoder=decoder)
        assert result.ok, result.error
        results[mode] = (result, pq.read_table(tmp_path / mode / "tokens" / "mixed.parquet").to_pylist())
    (cpu, cpu_rows), (dev, dev_rows) = results["cpu"], results["device"]
    assert [r["status"] for r in dev_rows] == [r["status"] for r in cpu_rows] == ["ok", "ok", "ok", "decode_error"]
    assert [(r["height"], r["width"]) for r in dev_rows] == [(r["height"], r["width"]) for r in cpu_rows]
    assert dev_rows[2]["tokens"] == cpu_rows[2]["tokens"]  # the PNG went through Pillow in both
    assert dev.device_decode_s > 0 and cpu.device_decode_s == 0


def test_refused_where_it_cannot_run(ray_cluster, corpus_pattern, tmp_path):
    with pytest.raises(RuntimeError, match="CUDA"):
        nvjpeg_decoder("cpu")
    with pytest.raises(ValueError, match="exclude each other"):
        tiny_config([corpus_pattern], tmp_path / "x", gpu_decode=True, jpeg_draft=True).validate()
    with pytest.raises(ValueError, match="--gpus-per-actor > 0"):
        tiny_config([corpus_pattern], tmp_path / "x", gpu_decode=True, gpus_per_actor=0).validate()
    plain, _ = plan_job(tiny_config([corpus_pattern], tmp_path / "a"))
    gpu, _ = plan_job(tiny_config([corpus_pattern], tmp_path / "b", gpu_decode=True))
    assert plain.fingerprint != gpu.fingerprint and gpu.token_settings()["gpu_decode"] is True
    with pytest.raises(ValueError, match="needs GPU actors"):  # this cluster has no GPU
        run_tokenize(tiny_config([corpus_pattern], tmp_path / "c", gpu_decode=True))
