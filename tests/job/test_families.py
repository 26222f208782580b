"""Every tokenizer family through the tokenize job: tiny seeded models on one shard of real photos.

Per family the job runs in-process (plan_job -> build_tokenizer -> process_shard, what each actor
does), and the stored rows are checked against the same images encoded directly: integer codes
equal, ViTok latents equal within float16 rounding, and decoding a row read back from Parquet
gives the image the in-memory tokens give. ViTok also runs through `run_tokenize` on a real Ray.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.runner.build import build_tokenizer, plan_job
from pipeline.runner.config import TokenizeConfig
from pipeline.runner.job import prepare_output, run_tokenize
from pipeline.runner.shard_task import process_shard
from pipeline.sinks.reader import encoded_size, row_tokens
from pipeline.sinks.schema import decode_metadata
from pipeline.runner.verify import malformed_rows, verify_output
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.decode import decode_sample
from pipeline.sources.listing import expand_shards
from pipeline.sources.tar_stream import iter_samples
from pipeline.tokenizers.base import MultiScaleTokens
from pipeline.images import PreprocessConfig, apply_policy
from tests.job.corpus import encode, photo, write_tar

SHARD = "fam-000000"
FLAT_F8, FLAT_F16 = [1, 1, 1, 1], [1, 1, 1, 1, 1]  # channel multipliers: the stride, not the width
GSQ_G4 = {"embedding_dim": 16, "hidden_channels": 32, "channel_multipliers": FLAT_F8,
          "encoder_layer_configs": [1] * 5, "decoder_layer_configs": [1] * 5,
          "quantizer_config": {"quantize_type": "gvq", "embed_dim": 16, "num_embed": 512, "use_l2_norm": True,
                               "num_group": 4}}
# family -> (constructor config, job options). Small models as in tests/tokenizers; the options
# cover center-crop, native sizes (padding to the stride), tiling and grouped codes.
FAMILIES = {
    "var-vqvae": ({"ch": 32, "vocab_size": 256, "z_channels": 32}, dict(image_size=32, patch_nums=[1, 2])),
    "svqvae": ({"ch": 32, "codebook_size": 512, "encoder_ch_mult": FLAT_F8, "decoder_ch_mult": FLAT_F8},
               dict(tile_size=32, overlap=16, max_side=40, patch_nums=[1, 2, 4])),
    "flexvar": ({"ch": 32, "codebook_size": 512, "z_channels": 32, "encoder_ch_mult": FLAT_F16,
                 "decoder_ch_mult": FLAT_F16},
                dict(image_size=32, patch_nums=[1, 2])),
    "gq": ({"encoder_decoder_kwargs": {"ch": 32, "ch_mult": FLAT_F8, "num_res_blocks": 1, "z_channels": 16},
            "regulariser_kwargs": {"group": 4, "n_samples": 256}}, dict(image_policy="native")),
    "gsq": (GSQ_G4, dict(image_size=32)),
    "vitok": ({"variant": "Bw32d1h2-Bw32d1h2/1x16x8"}, dict(image_policy="native")),
}
GROUPS = {"gq": 4, "gsq": 4}


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    """4 real photos, long side 64: one square, three 43 x 64 (native mode pads or re-grids them;
    svqvae's max_side shrinks them to 40 x 40 / 27 x 40, padded to several tiles)."""
    members = []
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        members += [(f"s{i:04d}.jpg", encode(photo(name, 64))), (f"s{i:04d}.cls", str(i).encode())]
    return write_tar(tmp_path_factory.mktemp("families") / f"{SHARD}.tar", members)


def job_config(family: str, shard: str, out: Path, **overrides) -> TokenizeConfig:
    config, options = FAMILIES[family]
    path = out.parent / f"{out.name}-tokenizer.json"
    path.write_text(json.dumps(config))
    kw = dict(options, batch_size=4, num_actors=1, progress=False, **overrides)
    return TokenizeConfig(input=[shard], output=str(out), tokenizer=family, tokenizer_config=str(path), **kw)


def run_in_process(cfg: TokenizeConfig):
    """What the driver and one actor do for one shard, without Ray."""
    spec, _ = plan_job(cfg)
    tok = build_tokenizer(spec)
    layout = OutputLayout(cfg.output)
    prepare_output(layout, spec, cfg)
    result = process_shard(expand_shards(cfg.input)[0], tok, spec, layout)
    assert result.ok and result.created
    return spec, tok


def encode_directly(tok, spec, shard: str) -> list[tuple]:
    """(tokens of the image's batch, position in it) per sample, batched as the job batches:
    images of one preprocessed size together, in tar order."""
    tensors = [tok.preprocess([decode_sample(raw).image]) for raw in iter_samples(shard)]
    by_size: dict[tuple, list[int]] = {}
    for i, x in enumerate(tensors):
        by_size.setdefault(tuple(x.shape[-2:]), []).append(i)
    found: dict[int, tuple] = {}
    for members in by_size.values():
        out = tok.encode(torch.cat([tensors[i] for i in members]), patch_nums=spec.patch_nums,
                         tile_size=spec.tile_size, overlap=spec.overlap)
        for j, i in enumerate(members):
            found[i] = (out, j)
    return [found[i] for i in range(len(tensors))]


def stack(rows: list[MultiScaleTokens]) -> MultiScaleTokens:
    """Batches of one (as `row_tokens` gives them) -> one batch; per-image extras concatenated."""
    extras = {k: [x for r in rows for x in r.extras[k]] if isinstance(v, list) else v
              for k, v in rows[0].extras.items()}
    grids = [torch.cat(per_scale) for per_scale in zip(*(r.grids for r in rows))]
    return dataclasses.replace(rows[0], grids=grids, extras=extras)


def data_file(out: Path) -> Path:
    return out / "tokens" / f"{SHARD}.parquet"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_through_the_job(family, shard, tmp_path):
    out = tmp_path / "out"
    spec, tok = run_in_process(job_config(family, shard, out))
    table = pq.read_table(data_file(out))
    assert table.num_rows == 4 and table.column("status").to_pylist() == ["ok"] * 4
    meta = decode_metadata(table.schema)
    assert meta["tokenizer"] == family and meta["groups"] == GROUPS.get(family, 1)
    manifest = json.loads((out / "_manifest" / f"{SHARD}.json").read_text())
    continuous = family == "vitok"
    if continuous:
        assert str(table.schema.field("tokens").type.value_type) == "halffloat"
        assert meta["continuous"] is True and meta["vocab_size"] == 0
        assert (meta["latent_channels"], meta["latent_dtype"], meta["latent_patch"]) == (8, "float16", 16)
        assert manifest["codebook"] is None
    else:
        assert table.schema.field("tokens").type.value_type == pa.uint16()
        assert "continuous" not in meta and meta["vocab_size"] == tok.vocab_size
        assert manifest["codebook"]["used_codes"] > 0

    batches: dict[int, tuple] = {}  # in-memory batch -> (batch, its rows read back, in batch order)
    for i, (batch, j) in enumerate(encode_directly(tok, spec, shard)):
        stored = row_tokens(table, i)
        assert len(stored.grids) == len(batch.grids)
        for got, want in zip(stored.grids, batch.grids):
            if continuous:  # the row holds this image's own grid of the zero-padded batch
                rows, cols = batch.extras["grid_rows"][j], batch.extras["grid_cols"][j]
                assert got.shape == (1, rows, cols, 8)
                torch.testing.assert_close(got[0], want[j, :rows, :cols], rtol=1e-3, atol=1e-3)
                assert not torch.equal(got[0], want[j, :rows, :cols])  # really float16 values
            else:
                assert got.shape[1:] == want.shape[1:] and torch.equal(got[0], want[j].long())
        batches.setdefault(id(batch), (batch, []))[1].append(stored)
    # The rows read back decode to the images the in-memory tokens decode to (rows stacked in
    # their batch's order, so both sides are one decoder pass over the same composition).
    for batch, rows in batches.values():
        from_rows, from_memory = tok.decode(stack(rows)), tok.decode(batch)
        assert from_rows.shape == from_memory.shape
        torch.testing.assert_close(from_rows, from_memory, rtol=0, atol=5e-2 if continuous else 1e-5)

    # A second run (a fresh tokenizer, as another actor would build) writes the same bytes.
    again = tmp_path / "again"
    run_in_process(job_config(family, shard, again))
    assert data_file(again).read_bytes() == data_file(out).read_bytes()
    report = verify_output(str(out), [shard])
    assert report.clean, report.format()


def test_latents_in_float32_and_the_options_that_are_refused(shard, tmp_path):
    out = tmp_path / "fp32"
    spec, tok = run_in_process(job_config("vitok", shard, out, latent_dtype="float32"))
    table = pq.read_table(data_file(out))
    assert table.schema.field("tokens").type.value_type == pa.float32()
    assert decode_metadata(table.schema)["latent_dtype"] == "float32"
    for i, (batch, j) in enumerate(encode_directly(tok, spec, shard)):
        rows, cols = batch.extras["grid_rows"][j], batch.extras["grid_cols"][j]
        assert torch.equal(row_tokens(table, i).grids[0][0], batch.grids[0][j, :rows, :cols])
    half, _ = plan_job(job_config("vitok", shard, tmp_path / "half"))
    assert spec.fingerprint != half.fingerprint  # resuming with the other dtype is refused
    assert verify_output(str(out), [shard]).clean

    refused = [(dict(tokenizer="vitok", latent_dtype="float32", precision="bf16"), "needs --precision fp32"),
               (dict(tokenizer="vitok", latent_dtype="float64"), "latent dtype must be one of"),
               (dict(tokenizer="vitok", scale_superset=True), "multi-scale tokenizer"),
               (dict(tokenizer="gsq", latent_dtype="float32"), "applies to continuous tokenizers")]
    for overrides, message in refused:
        family = overrides.pop("tokenizer")
        with pytest.raises(ValueError, match=message):
            plan_job(job_config(family, shard, tmp_path / "refused", **overrides))


def test_verify_flags_rows_whose_tokens_do_not_fill_their_grids(shard, tmp_path):
    out = tmp_path / "out"
    run_in_process(job_config("gsq", shard, out))
    table = pq.read_table(data_file(out))
    assert malformed_rows(table) == []
    tokens = table.column("tokens").to_pylist()
    tokens[2] = tokens[2][:-4]  # one position's 4 grouped codes missing
    bad = table.set_column(table.schema.get_field_index("tokens"), table.schema.field("tokens"),
                           pa.array(tokens, table.schema.field("tokens").type))
    assert malformed_rows(bad) == [2]


def test_reader_image_size_follows_the_image_policy():
    image = np.zeros((43, 64, 3), np.uint8)
    for cfg in (PreprocessConfig(mode="native", max_side=50), PreprocessConfig(mode="native"),
                PreprocessConfig(mode="center-crop", size=32), PreprocessConfig(mode="resize", size=24)):
        expected = apply_policy(image, cfg).shape[:2]
        assert encoded_size((43, 64), vars(cfg), canvas=(64, 64)) == expected
    assert encoded_size((43, 64), None, canvas=(48, 64)) == (48, 64)


def test_vitok_on_ray_gives_the_in_process_bytes(ray_cluster, shard, tmp_path):
    from pipeline.report.page import build_report

    local = tmp_path / "local"
    run_in_process(job_config("vitok", shard, local))
    out = tmp_path / "ray"
    assert run_tokenize(job_config("vitok", shard, out)) == 0
    assert data_file(out).read_bytes() == data_file(local).read_bytes()
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["totals"]["ok"] == 4 and stats["codebook"] is None
    assert verify_output(str(out), [shard]).clean
    html = Path(build_report(str(out), reconstructions=1)).read_text()
    assert "continuous latents: there is no codebook" in html
