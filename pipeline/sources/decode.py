"""A raw sample -> an upright RGB image plus label and metadata, or a bad-input status.

Runs in a thread pool (Pillow releases the GIL while decoding). Statuses a sample can get here:
  missing_image   no image member (.jpg/.png/...) in the sample
  empty_image     the image member has zero bytes
  too_large       the image's declared size exceeds the pixel limit (decompression bomb), or the
                  member was larger than the member byte limit and was not read
  decode_error    the image member is not a decodable image
  bad_label       the .cls member is not an integer, or does not fit int32
and whatever the tar reader already set (duplicate_key, truncated_tar, corrupt_tar).
CMYK, 16-bit, greyscale, palette and alpha images are converted to RGB and EXIF orientation is
applied by `pipeline.images.to_rgb`; `height`/`width` are of the upright image.

JPEG draft (optional, `--jpeg-draft`): libjpeg can decode at 1/2, 1/4 or 1/8 scale straight from
the DCT coefficients, several times faster than a full decode followed by a large downscale. Given
the image policy, `draft_request` asks for the smallest such scale that still leaves at least the
pixels the policy's resize needs, so the LANCZOS resize that follows only ever shrinks. The pixels
differ from a full decode (DCT scaling is not LANCZOS), so the option is part of the job's token
settings: a run with it and a run without it have different fingerprints and never share an output.
`height`/`width` stay those of the full-size image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipeline.sources.device_decode import DeviceJpeg, wants_device
from pipeline.sources.tar_stream import RawSample
from pipeline.images import PreprocessConfig, to_rgb
from pipeline.transient import TransientError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pnm")
# Pillow only tries these decoders: bytes of any other format (PostScript in a `.jpg`, which
# Pillow would hand to Ghostscript where it is installed; SVG; ...) are a decode_error.
# (MPO, multi-picture JPEG, opens through the JPEG decoder.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "PPM")
INT32_RANGE = (-(2 ** 31), 2 ** 31 - 1)
LABEL_EXTENSION = "cls"
META_EXTENSION = "json"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit (~ 9459 x 9459)
DRAFT_FORMATS = ("JPEG", "MPO")
EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that transpose the image


@dataclass
class DecodedSample:
    index: int
    key: str
    status: str = "ok"
    error: str | None = None
    label: int | None = None
    meta: str | None = None
    image: Any = None           # RGB PIL image when status == "ok"
    jpeg: DeviceJpeg | None = None  # instead of `image`: a JPEG left for the GPU (--gpu-decode)
    height: int | None = None
    width: int | None = None
    crop_boxes: list[tuple[int, int, int, int]] | None = None  # per view, with --variants crop:K

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, status: str, error: str) -> "DecodedSample":
        self.status, self.error, self.image, self.jpeg = status, error, None, None
        return self


def find_image_member(sample: RawSample) -> str | None:
    """The sample's image field: the first named by an image extension (`jpg`), else the first
    whose every dotted part is one (`jpeg.jpg`, from `x.JPEG.jpg`). A field like `seg.png` (a
    mask beside the image) is never the image."""
    for ext in sample.members:
        if ext in IMAGE_EXTENSIONS:
            return ext
    for ext in sample.members:
        if ext and all(part in IMAGE_EXTENSIONS for part in ext.split(".")):
            return ext
    return None


def parse_label(text: str) -> int:
    """The .cls text as a class index; ValueError unless it is an integer that fits int32."""
    value = int(text.strip())
    if not INT32_RANGE[0] <= value <= INT32_RANGE[1]:
        raise ValueError(f"{value} does not fit int32")
    return value


def allow_pixels(max_pixels: int) -> None:
    """Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS by itself while opening; raise that
    guard so that our own limit (checked right after the header is read) is the one that holds."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def draft_request(size: tuple[int, int], policy: PreprocessConfig) -> tuple[int, int] | None:
    """The (w, h) to pass to `Image.draft` for an image of stored size `size` under `policy`, or
    None when DCT scaling cannot help (it only pays at a reduction of 2x or more).

    Pillow picks the largest scale 1/s (s in 8, 4, 2) with w // rw >= s and h // rh >= s, so the
    drafted image is at least (rw, rh): exactly what the policy's resize needs.
    Orientation does not matter: the requests are symmetric or scale both sides alike.
    """
    w, h = size
    if policy.mode == "center-crop":
        side = round(policy.size * policy.resize_ratio)   # the shorter side after resize_shorter
        want = (side, side)                               # min(w // side, h // side) = short // side
    elif policy.mode == "resize":
        want = (policy.size, policy.size)
    elif policy.max_side is not None and max(w, h) > policy.max_side:
        scale = policy.max_side / max(w, h)
        want = (max(1, round(w * scale)), max(1, round(h * scale)))
    else:
        return None
    if min(w // want[0], h // want[1]) < 2:
        return None
    return want


def decode_sample(sample: RawSample, max_pixels: int = DEFAULT_MAX_PIXELS,
                  draft: PreprocessConfig | None = None, device_jpeg: bool = False) -> DecodedSample:
    """`draft`: the image policy to DCT-scale JPEGs for (see the module doc), None for full decodes.
    `device_jpeg`: leave JPEGs the GPU can decode undecoded in `.jpeg` (pipeline/sources/device_decode.py)."""
    out = DecodedSample(index=sample.index, key=sample.key)
    out.meta = _text(sample, META_EXTENSION)
    label_text = _text(sample, LABEL_EXTENSION)
    if sample.status is not None:
        return out.fail(sample.status, sample.error or sample.status)
    if label_text is not None:
        try:
            out.label = parse_label(label_text)
        except ValueError:
            return out.fail("bad_label", f".{LABEL_EXTENSION} member is not an integer that fits int32: "
                                         f"{label_text[:40]!r}")
    ext = find_image_member(sample)
    if ext is None:
        found = ", ".join("." + e for e in sample.members) or "nothing"
        hint = ("; the key ends at the first dot of a member's name (as in webdataset), so "
                "dots in keys split fields" if any("." in e for e in sample.members) else "")
        return out.fail("missing_image", f"no image field ({'/'.join(IMAGE_EXTENSIONS[:3])}/...); found {found}{hint}")
    member = sample.members[ext]
    if member.data is None:
        return out.fail("too_large", f".{ext} {member.skipped}")
    if not member.data:
        return out.fail("empty_image", f".{ext} member is empty (0 bytes)")
    try:
        allow_pixels(max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(member.data), formats=IMAGE_FORMATS)
            pixels = image.width * image.height
            if pixels > max_pixels:
                return out.fail("too_large", f"{image.width}x{image.height} image has {pixels} pixels, over the "
                                             f"limit of {max_pixels} (decompression bomb guard)")
            if device_jpeg and wants_device(image):
                orientation = _orientation(image)
                if orientation is not None:  # a broken EXIF block: Pillow's path decides
                    out.jpeg = DeviceJpeg(member.data, orientation)
                    out.width, out.height = _upright_size(image, orientation)
                    return out
            full = None  # the upright full size, when drafting makes the decoded image smaller
            if draft is not None and image.format in DRAFT_FORMATS:
                request = draft_request(image.size, draft)
                if request is not None:
                    full = _upright_size(image)
                    image.draft("RGB", request)
            image.load()
            rgb = to_rgb(image)
    except Image.DecompressionBombError as e:
        return out.fail("too_large", f"decompression bomb guard: {e}")
    except MemoryError as e:  # the machine, not the image: the attempt is retried (pipeline/transient.py)
        raise TransientError(f"out of memory decoding {sample.key!r}") from e
    except Exception as e:  # Pillow raises many types for broken files; all of them mean "bad image"
        return out.fail("decode_error", f".{ext}: {type(e).__name__}: {e}")
    out.image, (out.width, out.height) = rgb, full or rgb.size
    return out


def _upright_size(image: Image.Image, orientation: int | None = None) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header (before any draft). A broken
    EXIF block counts as upright here; to_rgb's exif_transpose decides what happens to it."""
    w, h = image.size
    orientation = _orientation(image) if orientation is None else orientation
    return (h, w) if orientation in SWAPS_SIDES else (w, h)


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation (1 when absent or out of range, as exif_transpose treats it); None when
    the EXIF block cannot be read."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _field(sample: RawSample, ext: str) -> str | None:
    """The field named `ext`, else the only field ending in `.ext` (`jpeg.cls` from `x.JPEG.cls`)."""
    if ext in sample.members:
        return ext
    dotted = [name for name in sample.members if name.endswith("." + ext)]
    return dotted[0] if len(dotted) == 1 else None


def _text(sample: RawSample, ext: str) -> str | None:
    member = sample.members.get(_field(sample, ext) or ext)
    if member is None or member.data is None:
        return None
    return member.data.decode("utf-8", errors="replace")
