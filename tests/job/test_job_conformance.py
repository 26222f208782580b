"""The whole job path against the reference pipeline, token for token, on real photos.

WebDataset tars of the bundled photos (JPEG and PNG, several sizes and aspect ratios, greyscale,
EXIF-rotated JPEGs) go through the real `run_tokenize` on a local Ray. Independently of the job's
code, the test reads the same tar with `tarfile` and runs the reference's evaluation pipeline
written out step by step: PIL decode, EXIF orientation, `convert("RGB")`, torchvision's
`Resize(side, LANCZOS)` (shorter side; the longer one truncated), `CenterCrop(size)` (offsets
rounded), `ToTensor` (u8 / 255 in float32), the reference's normalisation to [-1, 1], then the
model, one image at a time:
  var-vqvae  side round(1.125 * size) and x + x - 1 (VAR's evaluation transform and
             `normalize_01_into_pm1`); the model is benchmarks/reference_vqvae.py, VAR's
             `img_to_idxBl` in the official op order (checked here against the official fixture
             tokens first)
  gsq        side = size and Normalize(0.5, 0.5), i.e. (x - 0.5) / 0.5 (Resize + CenterCrop at the
             training resolution, tokenizers_spec 2.5/3.5); the model is the tokenizer's own
             encoder + quantiser (its conformance with the reference's outputs is
             tests/tokenizers/test_gsq.py)
Small seeded random weights, so both jobs run in seconds on a CPU.

EXIF: the official loader (torchvision's `pil_loader`) ignores EXIF orientation; the job stores
images upright (README, "Statuses"), so the reference steps here transpose first, which is what
the job promises. Images with alpha are left out: the official `convert("RGB")` drops alpha, the
job composites it on white (a documented departure).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps

from benchmarks.reference_vqvae import img_to_idx
from pipeline.runner.config import TokenizeConfig
from pipeline.runner.job import run_tokenize
from pipeline.sources.sample_corpus import load_source
from pipeline.tokenizers import load_tokenizer
from tests.job.corpus import write_tar

SIZE = 64
VAR_CONFIG = {"ch": 32, "vocab_size": 256, "z_channels": 32, "v_patch_nums": [1, 2, 3, 4]}
GSQ_CONFIG = {"embedding_dim": 16, "hidden_channels": 32, "channel_multipliers": [1, 1, 1, 1],
              "encoder_layer_configs": [1] * 5, "decoder_layer_configs": [1] * 5,
              "quantizer_config": {"quantize_type": "gvq", "embed_dim": 16, "num_embed": 512, "use_l2_norm": True,
                                   "num_group": 4}}
EXIF_ORIENTATION = 0x0112
# (photo, crop box as fractions (left, top, right, bottom), stored size (w, h), format, EXIF orientation)
PHOTOS = [
    ("astronaut", (0.0, 0.1, 1.0, 0.77), (300, 200), "JPEG", None),      # landscape 3:2
    ("coffee", (0.0, 0.0, 1.0, 1.0), (640, 427), "JPEG", None),          # large, downscaled 6x
    ("chelsea", (0.2, 0.0, 0.7, 1.0), (150, 260), "PNG", None),          # portrait PNG
    ("rocket", (0.0, 0.0, 1.0, 1.0), (90, 135), "JPEG", 6),              # rotated 90 degrees by EXIF
    ("camera", (0.1, 0.1, 0.9, 0.9), (100, 100), "PNG", None),           # greyscale (mode L), square
    ("hubble_deep_field", (0.0, 0.3, 1.0, 0.55), (256, 64), "JPEG", 3),  # 4:1, upside down by EXIF
    ("coins", (0.0, 0.0, 1.0, 1.0), (70, 50), "JPEG", 8),                # smaller than the resize: upscaled
    ("immunohistochemistry", (0.25, 0.25, 0.75, 0.75), (72, 72), "JPEG", None),  # exactly round(1.125*64)
]


def make_photo(name: str, box: tuple[float, float, float, float], size: tuple[int, int], fmt: str,
               orientation: int | None) -> bytes:
    arr = load_source(name)
    image = Image.fromarray(arr if arr.ndim == 3 else arr, "RGB" if arr.ndim == 3 else "L")
    w, h = image.size
    image = image.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt == "JPEG":
        exif = Image.Exif()
        if orientation:
            exif[EXIF_ORIENTATION] = orientation
        image.save(buf, "JPEG", quality=90, subsampling=2, exif=exif.tobytes())
    else:
        image.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo_tars(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("conformance")
    members = []
    for i, (name, box, size, fmt, orientation) in enumerate(PHOTOS):
        ext = "jpg" if fmt == "JPEG" else "png"
        members.append((f"photo{i:04d}.{ext}", make_photo(name, box, size, fmt, orientation)))
        members.append((f"photo{i:04d}.cls", str(i).encode()))
    half = len(members) // 2
    return [write_tar(root / "photos-000000.tar", members[:half]), write_tar(root / "photos-000001.tar", members[half:])]


# ------------------------------------------------------------------ the reference pipeline, step by step
def read_tar_images(path: str) -> list[tuple[str, bytes]]:
    """(key, image bytes) in tar order, with the standard library's tar reader."""
    out = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.rpartition(".")
            if ext in ("jpg", "png"):
                out.append((key, tar.extractfile(member).read()))
    return out


def var_normalise(x: torch.Tensor) -> torch.Tensor:
    return x.add(x).add_(-1)  # VAR's normalize_01_into_pm1


def normalise_half(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5    # torchvision Normalize(mean=0.5, std=0.5)


def reference_tensor(data: bytes, size: int, resize_ratio: float, normalise) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image bytes -> (1, 3, size, size) in [-1, 1], and the upright (height, width)."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    image = image.convert("RGB")
    upright = (image.height, image.width)
    # torchvision Resize(int): the shorter side to `target`, the longer one int(target * long / short)
    target = round(resize_ratio * size)
    w, h = image.size
    if w <= h:
        new_w, new_h = target, int(target * h / w)
    else:
        new_w, new_h = int(target * w / h), target
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    # torchvision CenterCrop: offsets int(round((side - size) / 2.0))
    top = int(round((image.height - size) / 2.0))
    left = int(round((image.width - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    # ToTensor, then the reference's normalisation
    x = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return normalise(x).unsqueeze(0), upright


def run_job(tars: list[str], out: Path, tokenizer: str, config: dict, **kw) -> dict[str, dict]:
    config_path = out.parent / f"{out.name}-tokenizer.json"
    config_path.write_text(json.dumps(config))
    cfg = TokenizeConfig(input=tars, output=str(out), tokenizer=tokenizer, tokenizer_config=str(config_path),
                         image_size=SIZE, batch_size=4, num_actors=1, progress=False, **kw)
    assert run_tokenize(cfg) == 0
    rows = {}
    for tar in tars:
        name = Path(tar).name[:-len(".tar")]
        for row in pq.read_table(out / "tokens" / f"{name}.parquet").to_pylist():
            rows[row["key"]] = row
    return rows


def assert_rows_equal_reference(rows: dict[str, dict], tars: list[str], reference, resize_ratio: float,
                                normalise) -> None:
    keys = [key for tar in tars for key, _ in read_tar_images(tar)]
    assert list(rows) == keys, "one row per photo, in tar order"
    for tar in tars:
        for key, data in read_tar_images(tar):
            x, upright = reference_tensor(data, SIZE, resize_ratio, normalise)
            row = rows[key]
            assert row["status"] == "ok", (key, row["error"])
            assert (row["height"], row["width"]) == upright, key
            expected = reference(x)
            stored = np.asarray(row["tokens"], dtype=np.int64)
            assert stored.shape == expected.shape, key
            assert np.array_equal(stored, expected), f"{key}: {(stored != expected).sum()} of {stored.size} tokens differ"


# ------------------------------------------------------------------ tests
def test_reference_forward_reproduces_the_official_fixture_tokens(fixtures_dir):
    """The transcription of VAR's op order gives the official code's tokens on its fixture."""
    var_dir = fixtures_dir / "var"
    config = json.loads((var_dir / "vqvae_small_config.json").read_text())["constructor"]
    tok = load_tokenizer("var-vqvae", checkpoint=str(var_dir / "vqvae_small.safetensors"), config=config)
    expected = json.loads((var_dir / "expected_idx.json").read_text())
    idx = img_to_idx(tok.model, torch.from_numpy(np.load(var_dir / "inputs.npy")), tok.patch_nums)
    for i, per_scale in enumerate(expected["idx"]):
        assert [idx[k][i].tolist() for k in range(len(per_scale))] == per_scale


def test_exif_and_sizes_cover_what_they_claim(photo_tars):
    """The corpus really holds rotated, greyscale, PNG, upscaled and elongated photos."""
    images = [Image.open(io.BytesIO(data)) for tar in photo_tars for _, data in read_tar_images(tar)]
    orientations = {im.getexif().get(EXIF_ORIENTATION) for im in images}
    assert {3, 6, 8} <= orientations
    assert {"L", "RGB"} <= {im.mode for im in images} and {"JPEG", "PNG"} <= {im.format for im in images}
    assert min(min(im.size) for im in images) < round(1.125 * SIZE) < max(max(im.size) for im in images)
    assert max(max(im.size) / min(im.size) for im in images) >= 4


def test_var_vqvae_job_equals_the_reference_pipeline(ray_cluster, photo_tars, tmp_path):
    rows = run_job(photo_tars, tmp_path / "var", "var-vqvae", VAR_CONFIG)
    tok = load_tokenizer("var-vqvae", config=VAR_CONFIG)  # the same seeded weights the actor built
    patch_nums = tuple(VAR_CONFIG["v_patch_nums"])
    assert all(r["scale_shapes"] == [p for n in patch_nums for p in (n, n)] for r in rows.values())
    assert_rows_equal_reference(rows, photo_tars,
                                lambda x: torch.cat(img_to_idx(tok.model, x, patch_nums), dim=1)[0].numpy(),
                                resize_ratio=1.125, normalise=var_normalise)


def test_gsq_job_equals_the_reference_pipeline(ray_cluster, photo_tars, tmp_path):
    rows = run_job(photo_tars, tmp_path / "gsq", "gsq", GSQ_CONFIG)
    tok = load_tokenizer("gsq", config=GSQ_CONFIG)
    groups = GSQ_CONFIG["quantizer_config"]["num_group"]
    assert all(r["scale_shapes"] == [SIZE // 8, SIZE // 8] for r in rows.values())

    def reference(x: torch.Tensor) -> np.ndarray:
        (grid,) = tok.encode(x).grids  # (1, h, w, G): a position's G codes adjacent
        assert grid.shape == (1, SIZE // 8, SIZE // 8, groups)
        return grid.reshape(-1).to(torch.int64).numpy()
    assert_rows_equal_reference(rows, photo_tars, reference, resize_ratio=1.0, normalise=normalise_half)
