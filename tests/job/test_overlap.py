"""The overlapped job (several shards in flight per actor, reader threads, writes while the next
shard encodes, JPEG draft decoding) gives the sequential job's bytes, and errors stay with their
shard."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.runner.actor import ShardWorker
from pipeline.runner.build import build_tokenizer, plan_job
from pipeline.runner.job import OutputConflict, prepare_output, run_tokenize
from pipeline.runner.shard_task import process_shard
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.decode import decode_sample, draft_request
from pipeline.sources.listing import Shard, expand_shards
from pipeline.sources.tar_stream import Member, RawSample
from pipeline.images import PreprocessConfig, apply_policy
from tests.job.conftest import tiny_config, var_config
from tests.job.corpus import encode, photo


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "tokens").glob("*.parquet")) if p.is_file()}


def test_shards_in_flight_give_the_sequential_bytes(ray_cluster, var_reference, corpus_pattern,
                                                     var_tokenizer_json, tmp_path):
    # var_reference ran with the default 2 shards in flight per actor.
    seq = tmp_path / "var-seq"
    assert run_tokenize(var_config([corpus_pattern], seq, var_tokenizer_json, shards_per_actor=1)) == 0
    assert files_of(seq) == files_of(var_reference) and len(files_of(seq)) == 3
    one, three = tmp_path / "tiny-1", tmp_path / "tiny-3"
    assert run_tokenize(tiny_config([corpus_pattern], one, num_actors=1, shards_per_actor=1)) == 0
    assert run_tokenize(tiny_config([corpus_pattern], three, num_actors=1, shards_per_actor=3)) == 0
    assert files_of(one) == files_of(three)


def test_concurrent_shards_share_a_worker_and_keep_their_errors(corpus_dir, corpus_pattern, tmp_path):
    shards = expand_shards([corpus_pattern])
    spec, _ = plan_job(tiny_config([corpus_pattern], tmp_path / "seq", batch_size=3))
    seq_layout = OutputLayout(spec.output)
    seq_layout.makedirs()
    tok = build_tokenizer(spec)
    assert all(process_shard(s, tok, spec, seq_layout).ok for s in shards)

    par = spec.replace(output=str(tmp_path / "par"))
    OutputLayout(par.output).makedirs()
    (tmp_path / "par" / "tokens" / "sample-000001.parquet").mkdir()  # this shard's write must fail
    missing = Shard(url=str(corpus_dir / "sample-does-not-exist.tar"), name="sample-does-not-exist")
    worker = ShardWorker(par, num_cpus=1)  # in process: no Ray, the same object the actor is
    with ThreadPoolExecutor(4) as threads:  # what Ray's max_concurrency does with the calls
        results = list(threads.map(worker.process, [*shards, missing]))
    assert [r.ok for r in results] == [True, False, True, False]
    assert "IsADirectoryError" in results[1].error
    assert "UnreadableShard" in results[3].error
    # The write failed at publication: the shard is committed (its manifest won) but its data is
    # still in its attempt file, which the next attempt (or run) publishes.
    assert (tmp_path / "par" / "_manifest" / "sample-000001.json").exists()
    assert [p.name.split("@")[0] for p in (tmp_path / "par" / "_attempts").iterdir()] == ["sample-000001"]
    good = {k: v for k, v in files_of(tmp_path / "par").items() if k != "sample-000001.parquet"}
    expected = files_of(tmp_path / "seq")
    assert good == {k: v for k, v in expected.items() if k in good} and len(good) == 2
    r = results[0]
    assert r.rows == 4 and r.encode_s > 0 and r.decode_s > 0 and r.write_s > 0
    # After the failures the worker still tokenizes (nothing left locked or half open).
    (tmp_path / "par" / "tokens" / "sample-000001.parquet").rmdir()
    again = worker.process(shards[1])
    assert again.ok and not again.created  # committed before; this attempt only published it
    assert files_of(tmp_path / "par")["sample-000001.parquet"] == expected["sample-000001.parquet"]


def _raw(data: bytes, ext: str = "jpg") -> RawSample:
    return RawSample(key="k", index=0, members={ext: Member(f"k.{ext}", data)})


def test_jpeg_draft_decodes_small_and_keeps_the_full_size():
    policy = PreprocessConfig(size=64)  # center-crop: shorter side to 72
    assert draft_request((512, 512), policy) == (72, 72)
    assert draft_request((120, 500), policy) is None  # less than 2x: a full decode
    assert draft_request((300, 200), PreprocessConfig(mode="resize", size=64)) == (64, 64)
    assert draft_request((2000, 1000), PreprocessConfig(mode="native", max_side=500)) == (500, 250)
    assert draft_request((2000, 1000), PreprocessConfig(mode="native")) is None

    jpeg = encode(photo("astronaut", 512), quality=95)
    full = decode_sample(_raw(jpeg))
    small = decode_sample(_raw(jpeg), draft=policy)
    assert full.image.size == (512, 512) and small.image.size == (128, 128)  # DCT scale 1/4
    assert (small.width, small.height) == (512, 512)
    a, b = apply_policy(full.image, policy), apply_policy(small.image, policy)
    assert a.shape == b.shape == (64, 64, 3)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert 0 < diff.mean() < 6  # other pixels, the same picture

    # EXIF orientation 6: stored landscape, upright portrait; the recorded size is the upright one.
    image = photo("rocket", 640)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = decode_sample(_raw(encode(image, exif=exif.tobytes())), draft=policy)
    assert (rotated.width, rotated.height) == (image.height, image.width)
    assert rotated.image.height > rotated.image.width and rotated.image.height < image.width
    png = io.BytesIO()
    photo("astronaut", 512).save(png, "PNG")
    assert decode_sample(_raw(png.getvalue(), "png"), draft=policy).image.size == (512, 512)


def test_jpeg_draft_is_part_of_the_job_identity(corpus_pattern, tmp_path):
    plain_cfg = tiny_config([corpus_pattern], tmp_path / "out")
    draft_cfg = tiny_config([corpus_pattern], tmp_path / "out", jpeg_draft=True)
    plain, _ = plan_job(plain_cfg)
    draft, _ = plan_job(draft_cfg)
    assert "jpeg_draft" not in plain.token_settings() and draft.token_settings()["jpeg_draft"] is True
    assert plain.fingerprint != draft.fingerprint
    assert draft.metadata["job_config"]["jpeg_draft"] is True
    layout = OutputLayout(str(tmp_path / "out"))
    prepare_output(layout, plain, plain_cfg)
    with pytest.raises(OutputConflict, match="jpeg_draft"):
        prepare_output(layout, draft, draft_cfg)
