"""The job against a real S3-protocol server (moto, loopback): shards read from S3, tokens and
manifests committed to S3 with conditional create, verify through S3, the CLI's --storage-option."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main as cli_main
from pipeline.runner.job import run_tokenize
from pipeline.runner.verify import verify_output
from pipeline.sinks.writer import OutputLayout
from pipeline.sources.listing import expand_shards
from pipeline.var.data import count_ok_rows, open_token_source
from tests.job.conftest import TINY_MODULE, var_config

BUCKET = "scaletok-job"


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    fs = s3_server["fs"]
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return BUCKET


@pytest.fixture(scope="module")
def s3_corpus(s3_server, bucket, corpus_dir):
    fs = s3_server["fs"]
    for path in sorted(corpus_dir.glob("*.tar")):
        fs.put(str(path), f"{BUCKET}/corpus/{path.name}")
    return f"s3://{BUCKET}/corpus"


def test_listing_on_s3(s3_server, s3_corpus):
    opts = s3_server["storage_options"]
    globbed = expand_shards([f"{s3_corpus}/*.tar"], opts)
    braced = expand_shards([f"{s3_corpus}/sample-{{000000..000002}}.tar"], opts)
    assert [s.url for s in globbed] == [s.url for s in braced]
    assert [s.name for s in globbed] == ["sample-000000", "sample-000001", "sample-000002"]


def test_var_vqvae_from_s3_to_s3_matches_the_local_bytes(s3_server, s3_corpus, var_reference,
                                                         var_tokenizer_json, ray_cluster):
    fs, opts = s3_server["fs"], s3_server["storage_options"]
    out = f"s3://{BUCKET}/tokens-var"
    cfg = var_config([f"{s3_corpus}/sample-{{000000..000002}}.tar"], out, var_tokenizer_json, num_actors=2)
    cfg.storage_options = opts
    assert run_tokenize(cfg) == 0
    for local in sorted((var_reference / "tokens").glob("*.parquet")):
        assert fs.cat_file(f"{BUCKET}/tokens-var/tokens/{local.name}") == local.read_bytes(), local.name
    manifest = json.loads(fs.cat_file(f"{BUCKET}/tokens-var/_manifest/sample-000001.json"))
    assert manifest["rows"] == 4 and manifest["input"].startswith("s3://")
    assert json.loads(fs.cat_file(f"{BUCKET}/tokens-var/_stats.json"))["totals"]["ok"] == 12
    report = verify_output(out, [f"{s3_corpus}/*.tar"], opts)
    assert report.clean, report.format()
    # Training's reader on the same S3 output: schemas from the footers (range reads), statuses.
    source = open_token_source(out, opts)
    assert len(source.files) == 3 and source.metadata["patch_nums"] == [1, 2, 3, 4]
    assert count_ok_rows(source) == 12


def test_conditional_create_on_s3(s3_server, bucket):
    layout = OutputLayout(f"s3://{BUCKET}/commit", s3_server["storage_options"])
    assert layout.create_if_absent(layout.join("_manifest", "b.json"), b"1") is True
    assert layout.create_if_absent(layout.join("_manifest", "b.json"), b"2") is False
    assert layout.read_bytes(layout.join("_manifest", "b.json")) == b"1"
    assert layout.probe_conditional_create() is True


def test_cli_with_storage_options(s3_server, s3_corpus, ray_cluster, capsys):
    endpoint = s3_server["endpoint_url"]
    out = f"s3://{BUCKET}/tokens-cli"
    args = ["tokenize", "--input", f"{s3_corpus}/sample-00000[01].tar", "--output", out,
            "--tokenizer", "tiny-pool", "--tokenizer-module", TINY_MODULE, "--num-actors", "1",
            "--batch-size", "8", "--max-shard-retries", "1", "--no-progress",
            "--storage-option", "key=testing", "--storage-option", "secret=testing",
            "--storage-option", f"endpoint_url={endpoint}"]
    assert cli_main(args) == 0
    assert "2/2 committed" in capsys.readouterr().out
    verify = ["verify", out, "--input", f"{s3_corpus}/sample-00000[01].tar", "--storage-option", "key=testing",
              "--storage-option", "secret=testing", "--storage-option", f"endpoint_url={endpoint}"]
    assert cli_main(verify) == 0
    assert "clean" in capsys.readouterr().out
    s3_server["fs"].rm(f"{BUCKET}/tokens-cli/_manifest/sample-000001.json")
    assert cli_main(verify) == 1
    assert "PARTIAL" in capsys.readouterr().out

