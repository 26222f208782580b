"""Image -> tensor conversion for the odd inputs real corpora contain."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.images import PreprocessConfig, apply_policy, to_rgb, uint8_to_tensor


def test_uint8_to_tensor_ranges():
    u8 = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    assert uint8_to_tensor(u8, (0.0, 1.0)).flatten().tolist() == pytest.approx([0, 128 / 255, 1])
    assert uint8_to_tensor(u8, (-1.0, 1.0)).flatten().tolist() == pytest.approx([-1, 2 * 128 / 255 - 1, 1], abs=1e-6)
    with pytest.raises(ValueError):
        uint8_to_tensor(np.zeros((1, 4, 4, 3), np.float32), (0.0, 1.0))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "I", "F", "LA", "RGBA", "1"])
def test_every_colour_mode_becomes_rgb(mode):
    base = Image.fromarray((np.arange(32 * 48 * 3) % 256).astype(np.uint8).reshape(32, 48, 3))
    if mode in ("I;16", "I", "F"):
        img = Image.fromarray((np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)).convert(mode)
    else:
        img = base.convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (48, 32)
    if mode in ("I;16", "I"):  # scaled by the 16-bit depth (65535 is white), not by the image's own range
        arr = np.asarray(out)
        assert arr.min() == 0 and arr.max() == round(61400 * 255 / 65535)
    if mode == "F":  # float images are read as 0..1: values above 1 are white
        arr = np.asarray(out)
        assert arr.min() == 0 and arr.max() == 255 and (arr == 255).mean() > 0.9


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish but fully transparent
    out = np.asarray(to_rgb(rgba))
    assert (out == 255).all()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    out = to_rgb(Image.open(io.BytesIO(buf.getvalue())))
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[2, 10, 2] > 200 and arr[-3, 10, 0] > 200  # blue on top after rotation, red below


def test_policies_give_expected_sizes():
    img = np.zeros((300, 500, 3), np.uint8)
    assert apply_policy(img, PreprocessConfig()).shape == (256, 256, 3)
    assert apply_policy(img, PreprocessConfig(mode="resize", size=64)).shape == (64, 64, 3)
    assert apply_policy(img, PreprocessConfig(mode="native")).shape == (300, 500, 3)
    assert apply_policy(img, PreprocessConfig(mode="native", max_side=100)).shape == (60, 100, 3)


def test_bad_inputs_are_rejected_clearly():
    with pytest.raises(ValueError, match="mode"):
        PreprocessConfig(mode="stretch")
    with pytest.raises(TypeError, match="uint8"):
        to_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="channels"):
        to_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError):
        to_rgb("not an image")


def test_center_crop_matches_reference_transform():
    # shorter side 300 -> 288 with LANCZOS, then the centred 256 crop (torchvision rounding)
    img = Image.fromarray((np.random.default_rng(0).integers(0, 255, (300, 451, 3))).astype(np.uint8))
    ref = img.resize((int(288 * 451 / 300), 288), Image.Resampling.LANCZOS)
    top, left = int(round((288 - 256) / 2.0)), int(round((ref.size[0] - 256) / 2.0))
    ref = np.asarray(ref.crop((left, top, left + 256, top + 256)))
    assert np.array_equal(apply_policy(img, PreprocessConfig()), ref)
    assert uint8_to_tensor(ref[None], (-1.0, 1.0)).dtype == torch.float32
