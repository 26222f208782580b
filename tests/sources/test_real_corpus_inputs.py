"""Inputs met in real corpora: each becomes a row with a status (or is converted), never a failed
shard: webdataset's own grouping, non-UTF-8 member names, labels outside int32, extreme aspect
ratios, non-image formats behind image extensions, 16-bit images, out of memory, huge limits."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.sinks.schema import TokenRow, build_table, token_schema
from pipeline.sources.decode import decode_sample
from pipeline.sources.tar_stream import Member, RawSample, escape_name, iter_samples, unescape_name
from pipeline.images import PreprocessConfig, apply_policy, to_rgb
from pipeline.transient import OUT_OF_MEMORY_STATUS, TransientError
from tests.job.corpus import bomb_png, encode, photo


def write_raw_tar(path, names_and_data) -> str:
    """Like tests.job.corpus.write_tar, but names may be bytes (non-UTF-8)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in names_and_data:
            if isinstance(name, bytes):
                name = name.decode("utf-8", "surrogateescape")
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1704067200
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def sample(**members: bytes) -> RawSample:
    return RawSample(key="k", index=0, members={ext: Member(f"k.{ext}", data) for ext, data in members.items()})


def test_grouping_equals_webdataset(tmp_path):
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    jpg = encode(photo("astronaut", 32))
    names = ["a/000001.jpg", "a/000001.seg.png", "a/000001.cls", "000002.JPG", "000002.Json", "__meta__",
             "noext", ".hidden.jpg", "x.y.z.jpg", "dir.v1/k.jpg", "dir.v1/k.txt", "000003.jpg", "000004.jpg",
             "000003.cls", b"caf\xe9.jpg", b"caf\xe9.cls", "n01440764_1.JPEG.jpg", "n01440764_1.JPEG.cls"]
    path = write_raw_tar(tmp_path / "mixed.tar", [(n, jpg if str(n).endswith(("jpg", "JPG", "png")) else b"1")
                                                   for n in names])
    with open(path, "rb") as f:
        theirs = [(escape_name(s["__key__"]), sorted(k for k in s if not k.startswith("__")))
                  for s in group_by_keys(dict(f, __url__=path) for f in tar_file_iterator(f))]
    ours = [(s.key, sorted(s.members)) for s in iter_samples(path)]
    assert ours == theirs
    assert ("a/000001", ["cls", "jpg", "seg.png"]) in ours          # the mask is a field, not a sample
    assert ("caf\\xe9", ["cls", "jpg"]) in ours and unescape_name("caf\\xe9") == b"caf\xe9"
    by_key = {s.key: s for s in iter_samples(path)}
    decoded = decode_sample(by_key["a/000001"])
    assert decoded.ok and decoded.label == 1 and (decoded.width, decoded.height) == photo("astronaut", 32).size
    assert decode_sample(by_key["n01440764_1"]).ok and decode_sample(by_key["n01440764_1"]).label == 1
    assert decode_sample(by_key["x"]).status == "missing_image"  # field "y.z.jpg": keys end at the first dot


def test_escaped_names_are_lossless_and_storable(tmp_path):
    for raw in (b"plain.jpg", b"caf\xe9", b"back\\slash", b"\\xe9 literal", b"\xff\xfe\x00", "日本".encode()):
        stored = escape_name(raw.decode("utf-8", "surrogateescape"))
        stored.encode("utf-8")  # storable
        assert unescape_name(stored) == raw
    assert escape_name("plain/key") == "plain/key"
    rows = [TokenRow(key=escape_name(b"bad\xe9".decode("utf-8", "surrogateescape")), shard="s",
                     status="decode_error", error="name bad\udce9 in a message")]
    table = build_table(rows, token_schema(16))
    assert table.column("key")[0].as_py() == "bad\\xe9" and "bad" in table.column("error")[0].as_py()


def test_labels_outside_int32_are_bad_labels():
    jpg = encode(photo("astronaut", 32))
    assert decode_sample(sample(jpg=jpg, cls=b"2147483647")).label == 2 ** 31 - 1
    for text in (b"2147483648", b"-2147483649", b"99999999999999999999"):
        out = decode_sample(sample(jpg=jpg, cls=text))
        assert out.status == "bad_label" and "int32" in out.error


def test_postscript_behind_a_jpg_extension_is_not_handed_to_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    called = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: called.append(1))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    out = decode_sample(sample(jpg=eps))
    assert out.status == "decode_error" and not called


def test_16_bit_images_are_scaled_by_bit_depth():
    white = Image.open(io.BytesIO(encode(Image.fromarray(np.full((4, 4), 65535, np.uint16)), "PNG")))
    assert white.mode.startswith("I;16")
    assert np.asarray(to_rgb(white)).min() == 255                    # white stays white
    dark = Image.open(io.BytesIO(encode(Image.fromarray(np.full((4, 4), 1000, np.uint16)), "PNG")))
    assert np.asarray(to_rgb(dark)).max() == round(1000 * 255 / 65535)  # not stretched to its own max
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32)))).max() == 128


def test_extreme_aspect_ratio_is_bounded():
    long_thin = Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 2_000_000, 3), dtype=np.uint8))
    out = apply_policy(long_thin, PreprocessConfig(size=64))
    assert out.shape == (64, 64, 3)
    # a 14 KB PNG of 2 000 000 x 4 decodes and becomes a row, with its real size
    png = encode(Image.fromarray(np.zeros((4, 2_000_000), np.uint8)), "PNG")
    decoded = decode_sample(sample(png=png))
    assert decoded.ok and (decoded.width, decoded.height) == (2_000_000, 4) and len(png) < 20_000
    # ordinary images keep the reference path bit for bit
    normal = photo("coffee", 96)
    ref = normal.resize((72, round(72 * normal.height / normal.width)) if normal.width < normal.height
                        else (int(72 * normal.width / normal.height), 72), Image.Resampling.LANCZOS)
    left, top = round((ref.width - 64) / 2), round((ref.height - 64) / 2)
    assert np.array_equal(apply_policy(normal, PreprocessConfig(size=64)),
                          np.asarray(ref.crop((left, top, left + 64, top + 64))))


def test_max_image_pixels_works_above_pillows_own_guard():
    big = bomb_png(20_000, 10_000)  # 200 M pixels: over Pillow's default hard limit of ~179 M
    assert decode_sample(sample(png=big)).status == "too_large"
    out = decode_sample(sample(png=big), max_pixels=300_000_000)
    assert out.status == "decode_error" and "bomb" not in out.error  # our limit held; the stub data fails


def test_out_of_memory_fails_the_attempt_not_the_row(monkeypatch, tmp_path):
    from pipeline.runner.build import build_tokenizer, plan_job
    from pipeline.runner.shard_task import process_shard
    from pipeline.sinks.writer import OutputLayout
    from pipeline.sources.listing import expand_shards
    from tests.job.conftest import tiny_config
    from tests.job.corpus import good_members, write_tar

    shard_path = write_tar(tmp_path / "s.tar", good_members("g", 3))
    spec, _ = plan_job(tiny_config([shard_path], tmp_path / "out", max_shard_retries=2))
    tok = build_tokenizer(spec)
    layout = OutputLayout(spec.output)
    layout.makedirs()
    shard = expand_shards(shard_path)[0]
    real_encode = type(tok)._encode

    def short_of_memory(self, x, *args):
        if x.shape[0] == 1 and self.config.get("fail_single", True):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_encode(self, x, *args)

    monkeypatch.setattr(type(tok), "_encode", short_of_memory)
    spec = spec.replace(batch_size=1)
    with pytest.raises(TransientError):
        process_shard(shard, tok, spec, layout, attempt=0)
    assert not list((tmp_path / "out" / "_manifest").glob("*.json"))  # nothing committed
    result = process_shard(shard, tok, spec, layout, attempt=2)  # the last allowed attempt
    assert result.ok and result.status_counts == {OUT_OF_MEMORY_STATUS: 3}

    def decode_oom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(Image, "open", decode_oom)
    with pytest.raises(TransientError):
        decode_sample(sample(jpg=b"\xff\xd8\xff"))


def test_build_table_survives_any_text():
    schema = token_schema(16)
    rows = [TokenRow(key="k", shard="s", status="decode_error", error="\udcff surrogate", meta="\ud800")]
    table = build_table(rows, schema)
    assert isinstance(table, pa.Table) and table.num_rows == 1
