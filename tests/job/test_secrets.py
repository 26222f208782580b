"""Secrets and signed URLs: masking (connection strings, auth headers and tuples, credentials in
URLs), storage options that reach Ray workers only through the object store (never in actor
arguments, the Train loop config, Ray's state API or logs), and pre-signed input URLs whose
signature is never written and whose re-signing does not change the shard's identity."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.config import config_from_ray, recorded_dict, to_ray_dict
from pipeline.runner.job import run_tokenize
from pipeline.secrets import redact_secrets, scrub_text
from pipeline.sources.listing import expand_shards
from pipeline.var.train_config import TrainConfig
from tests.job.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_masking_covers_every_shape_of_secret():
    options = {"key": "AKIA1", "secret": "S1", "client_kwargs": {"endpoint_url": "https://u:pw@minio:9000",
                                                                  "headers": {"Authorization": "Bearer T1"}},
               "connection_string": "AccountName=a;AccountKey=K1", "auth": ("user", "P1"),
               "sas_token": "sv=1&sig=Z", "region_name": "us-east-1"}
    masked = json.dumps(redact_secrets(options))
    for secret in ("AKIA1", "S1", "pw", "Bearer T1", "K1", "P1", "sig=Z"):
        assert secret not in masked, secret
    assert "us-east-1" in masked and "minio:9000" in masked and "u:***@minio" in masked
    text = "GET https://h/b/x.tar?X-Amz-Signature=abc failed with key AKIA1"
    assert scrub_text(text, options) == "GET https://h/b/x.tar?*** failed with key ***"


def test_configs_handed_to_ray_hold_no_secret(ray_cluster):
    cfg = TrainConfig(tokens=["s3://b/t"], storage_options={"key": "AKIA2", "secret": "S2-very-secret"})
    shipped = to_ray_dict(cfg)
    blob = pickle.dumps(shipped)
    assert b"S2-very-secret" not in blob and b"AKIA2" not in blob
    assert config_from_ray(TrainConfig, shipped).storage_options == cfg.storage_options
    assert "S2-very-secret" not in json.dumps(recorded_dict(cfg))


SCRIPT = """
import dataclasses, json, os, pickle, sys
import ray
from pipeline.ray_connect import init_ray
from pipeline.runner.job import run_tokenize
from tests.job.conftest import tiny_config
secret = sys.argv[1].split("=", 1)[1]  # given as on a command line: --storage-option secret=...
args = list(sys.argv)
init_ray(None, num_cpus=4, include_dashboard=True, _node_ip_address="127.0.0.2", logging_level="ERROR",
         log_to_driver=True)
cfg = tiny_config([args[2]], args[3], num_actors=1)
cfg.storage_options = {"key": "testing", "secret": secret, "client_kwargs": {"endpoint_url": args[4]}}
seen = {}
code = run_tokenize(cfg, on_scheduler=lambda s: seen.update(spec=pickle.dumps(s.spec)))
from ray.util import state
gcs = ray.get_runtime_context().gcs_address  # this Ray, not another one on the machine
views = [state.list_actors(address=gcs, detail=True, limit=10000),
         state.list_tasks(address=gcs, detail=True, limit=10000), state.list_objects(address=gcs, limit=10000),
         state.list_workers(address=gcs, detail=True, limit=10000), state.list_jobs(address=gcs, detail=True),
         state.list_placement_groups(address=gcs, detail=True)]
text = json.dumps([[dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in view] for view in views],
                  default=str)
logs = ""
session = ray._private.worker._global_node.get_session_dir_path()
for folder, _, files in os.walk(os.path.join(session, "logs")):
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            logs += f.read().decode("utf-8", "replace")
print(json.dumps({"code": code, "spec_has_secret": secret.encode() in seen["spec"],
                  "state_has_secret": secret in text, "state_chars": len(text),
                  "logs_have_secret": secret in logs, "log_chars": len(logs)}))
"""


def test_storage_options_never_reach_ray_in_clear(s3_server, corpus_dir):
    fs = s3_server["fs"]
    if not fs.exists("scaletok-secrets"):
        fs.mkdir("scaletok-secrets")
    fs.put(str(corpus_dir / "sample-000000.tar"), "scaletok-secrets/in/sample-000000.tar")
    secret = "s3cr3t-value-that-must-not-leak-7f3a"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", SCRIPT, f"secret={secret}", "s3://scaletok-secrets/in/sample-000000.tar",
                          "s3://scaletok-secrets/out", s3_server["endpoint_url"]],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert secret not in run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["state_chars"] > 1000 and result["log_chars"] > 1000
    assert not result["spec_has_secret"] and not result["state_has_secret"] and not result["logs_have_secret"]
    for path in fs.find("scaletok-secrets/out"):
        assert secret.encode() not in fs.cat_file(path), path


class SignedTars(BaseHTTPRequestHandler):
    """Serves files of `root` only with a `?sig=` query (a pre-signed URL), with Range support."""

    root: Path = Path(".")
    protocol_version = "HTTP/1.1"

    def _file(self) -> bytes | None:
        path, _, query = self.path.partition("?")
        target = self.root / path.lstrip("/")
        if "sig=" not in query or not target.is_file():
            return None
        return target.read_bytes()

    def do_HEAD(self) -> None:
        data = self._file()
        self.send_response(200 if data is not None else 403)
        self.send_header("Content-Length", str(len(data or b"")))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        data = self._file()
        if data is None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def signed_server(corpus_dir):
    handler = type("Handler", (SignedTars,), {"root": corpus_dir})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_signed_urls_resume_and_no_signature_is_written(ray_cluster, signed_server, tmp_path):
    pattern = f"{signed_server}/sample-{{000000..000002}}.tar?sig=FIRST-SIGNATURE&X-Amz-Expires=60"
    shards = expand_shards(pattern)
    assert [s.name for s in shards] == ["sample-000000", "sample-000001", "sample-000002"]
    assert all("?" not in s.display_url for s in shards)
    out = tmp_path / "out"
    assert run_tokenize(tiny_config([pattern], out, num_actors=1)) == 0
    resigned = pattern.replace("FIRST-SIGNATURE", "SECOND-SIGNATURE")
    assert run_tokenize(tiny_config([resigned], out, num_actors=1)) == 0
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["this_run"]["shards_skipped"] == 3 and stats["this_run"]["shards_committed"] == 0
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"FIRST-SIGNATURE" not in data and b"SECOND-SIGNATURE" not in data, path
    with pytest.raises(Exception, match="input .*sample-000009.tar: "):
        run_tokenize(tiny_config([f"{signed_server}/sample-000009.tar?sig=X"], tmp_path / "o2", num_actors=1))
