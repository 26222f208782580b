"""A raw sample -> an upright RGB image plus label and metadata, or a bad-input status.

Runs in a thread pool (Pillow releases the GIL while decoding). Statuses a sample can get here:
  missing_image   no image member (.jpg/.png/...) in the sample
  empty_image     the image member has zero bytes
  too_large       the image's declared size exceeds the pixel limit (decompression bomb), or the
                  member was larger than the member byte limit and was not read
  decode_error    the image member is not a decodable image
  bad_label       the .cls member is not an integer
and whatever the tar reader already set (duplicate_key, truncated_tar, corrupt_tar).
CMYK, 16-bit, greyscale, palette and alpha images are converted to RGB and EXIF orientation is
applied by `pipeline.tokenizers.preprocess.to_rgb`; `height`/`width` are of the upright image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipeline.sources.tar_stream import RawSample
from pipeline.tokenizers.preprocess import to_rgb

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pnm")
LABEL_EXTENSION = "cls"
META_EXTENSION = "json"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit (~ 9459 x 9459)


@dataclass
class DecodedSample:
    index: int
    key: str
    status: str = "ok"
    error: str | None = None
    label: int | None = None
    meta: str | None = None
    image: Any = None           # RGB PIL image when status == "ok"
    height: int | None = None
    width: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, status: str, error: str) -> "DecodedSample":
        self.status, self.error, self.image = status, error, None
        return self


def find_image_member(sample: RawSample) -> str | None:
    for ext in sample.members:
        if ext.lower() in IMAGE_EXTENSIONS:
            return ext
    return None


def decode_sample(sample: RawSample, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedSample:
    out = DecodedSample(index=sample.index, key=sample.key)
    out.meta = _text(sample, META_EXTENSION)
    label_text = _text(sample, LABEL_EXTENSION)
    if sample.status is not None:
        return out.fail(sample.status, sample.error or sample.status)
    if label_text is not None:
        try:
            out.label = int(label_text.strip())
        except ValueError:
            return out.fail("bad_label", f".{LABEL_EXTENSION} member is not an integer: {label_text[:40]!r}")
    ext = find_image_member(sample)
    if ext is None:
        found = ", ".join("." + e if e else "(no extension)" for e in sample.members) or "nothing"
        return out.fail("missing_image", f"no image member ({'/'.join(IMAGE_EXTENSIONS[:3])}/...); found {found}")
    member = sample.members[ext]
    if member.data is None:
        return out.fail("too_large", f".{ext} {member.skipped}")
    if not member.data:
        return out.fail("empty_image", f".{ext} member is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(member.data))
            pixels = image.width * image.height
            if pixels > max_pixels:
                return out.fail("too_large", f"{image.width}x{image.height} image has {pixels} pixels, over the "
                                             f"limit of {max_pixels} (decompression bomb guard)")
            image.load()
            rgb = to_rgb(image)
    except Image.DecompressionBombError as e:
        return out.fail("too_large", f"decompression bomb guard: {e}")
    except Exception as e:  # Pillow raises many types for broken files; all of them mean "bad image"
        return out.fail("decode_error", f".{ext}: {type(e).__name__}: {e}")
    out.image, out.width, out.height = rgb, rgb.width, rgb.height
    return out


def _text(sample: RawSample, ext: str) -> str | None:
    member = sample.members.get(ext)
    if member is None or member.data is None:
        return None
    return member.data.decode("utf-8", errors="replace")
