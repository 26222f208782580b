"""Test shards: real photos from scikit-image in real tars, plus one shard per kind of bad input."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

MTIME = 1704067200


@lru_cache(maxsize=None)
def photo(name: str = "astronaut", side: int = 96) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    image = Image.fromarray(arr)
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def write_tar(path: str | Path, members: list[tuple[str, bytes]]) -> str:
    """Members in the order given, fixed headers (byte-identical tars)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o444
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def good_members(prefix: str, count: int, names=("astronaut", "coffee", "chelsea", "rocket")) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        key = f"{prefix}{i:04d}"
        out.append((f"{key}.jpg", encode(photo(names[i % len(names)]))))
        out.append((f"{key}.cls", str(i % 10).encode()))
        out.append((f"{key}.json", json.dumps({"i": i, "src": names[i % len(names)]}).encode()))
    return out


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims width x height pixels (the data is a tiny stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> tuple[bytes, tuple[int, int]]:
    """A landscape JPEG stored with EXIF orientation 6 (display rotated 90°): upright it is portrait."""
    image = photo("rocket", 96)  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, exif=exif.tobytes()), (image.width, image.height)


def mode_images() -> dict[str, bytes]:
    base = photo("coffee", 64)
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    return {
        "cmyk.jpg": encode(base.convert("CMYK")),
        "grey16.png": encode(Image.fromarray(grey16.astype(np.uint16)), "PNG"),
        "grey.png": encode(base.convert("L"), "PNG"),
        "palette.png": encode(base.convert("P"), "PNG"),
        "alpha.png": encode(rgba, "PNG"),
    }


def write_bad_shards(root: str | Path) -> dict[str, str]:
    """One shard per kind of bad input; returns {shard name: path}. Expected statuses: EXPECTED."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards: dict[str, str] = {}
    good = good_members("g", 2)

    def put(name: str, members: list[tuple[str, bytes]]) -> str:
        shards[name] = write_tar(root / f"{name}.tar", members)
        return shards[name]

    put("bad-nonimage", good[:3] + [("x0001.jpg", b"this is not a JPEG at all")])
    put("bad-zerobyte", [("z0000.jpg", b""), ("z0000.cls", b"1")] + good[3:6])
    put("bad-bomb", [("b0000.png", bomb_png())] + good[:3])
    modes = mode_images()
    put("bad-modes", [(f"m{i:04d}.{name.split('.')[1]}", data) for i, (name, data) in enumerate(modes.items())])
    rotated, _ = exif_rotated_jpeg()
    put("bad-exif", [("e0000.jpg", rotated)])
    put("bad-noimage", good[:3] + [("n0000.cls", b"3"), ("n0000.json", b"{}")])
    put("bad-dotted", [("img.2024.01.jpg", encode(photo("chelsea"))), ("img.2024.01.cls", b"7"),
                       ("dir/n01440764_1.JPEG.jpg", encode(photo("coffee"))), ("dir/n01440764_1.JPEG.cls", b"8")])
    put("bad-dupkey", good[:3] + good[3:6] + [("g0000.jpg", encode(photo("rocket")))])
    put("bad-label", [("l0000.jpg", encode(photo("rocket"))), ("l0000.cls", b"cat")])
    # Truncated: cut inside the data of the last image.
    full = write_tar(root / "full.tmp", good_members("t", 3))
    data = Path(full).read_bytes()
    os.unlink(full)
    cut = data.rfind(b"\xff\xd8")  # start of the last JPEG
    (root / "bad-truncated.tar").write_bytes(data[: cut + 300])
    shards["bad-truncated"] = str(root / "bad-truncated.tar")
    # Corrupt: a junk header block between two good samples.
    first = Path(write_tar(root / "a.tmp", good_members("c", 1))).read_bytes()
    second = Path(write_tar(root / "b.tmp", good_members("d", 1))).read_bytes()
    os.unlink(root / "a.tmp")
    os.unlink(root / "b.tmp")
    body = first[: _end_of_members(first)]
    (root / "bad-corrupt.tar").write_bytes(body + b"\x17" * 512 + second)
    shards["bad-corrupt"] = str(root / "bad-corrupt.tar")
    (root / "bad-notatar.tar").write_bytes(b"PK\x03\x04 definitely a zip, not a tar" * 40)
    shards["bad-notatar"] = str(root / "bad-notatar.tar")
    return shards


def _end_of_members(tar_bytes: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        last = tar.getmembers()[-1]
        return last.offset_data + ((last.size + 511) // 512) * 512


# shard -> [(key, status)] of the original rows, in order ("bad-notatar" and missing URLs fail whole).
EXPECTED = {
    "bad-nonimage": [("g0000", "ok"), ("x0001", "decode_error")],
    "bad-zerobyte": [("z0000", "empty_image"), ("g0001", "ok")],
    "bad-bomb": [("b0000", "too_large"), ("g0000", "ok")],
    "bad-modes": [(f"m{i:04d}", "ok") for i in range(5)],
    "bad-exif": [("e0000", "ok")],
    "bad-noimage": [("g0000", "ok"), ("n0000", "missing_image")],
    # webdataset's grouping: the key ends at the first dot (fields "2024.01.jpg", "jpeg.jpg")
    "bad-dotted": [("img", "missing_image"), ("dir/n01440764_1", "ok")],
    "bad-dupkey": [("g0000", "ok"), ("g0001", "ok"), ("g0000", "duplicate_key")],
    "bad-label": [("l0000", "bad_label")],
    "bad-truncated": [("t0000", "ok"), ("t0001", "ok"), ("t0002", "truncated_tar")],
    "bad-corrupt": [("c0000", "ok"), ("<corrupt_tar at byte {offset}>", "corrupt_tar")],
}
