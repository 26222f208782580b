"""Wall time of the tokenize job against the output store's fault rate, and that the bytes hold.

A moto S3 server on loopback holds the corpus and the output; the job reaches it through the tests'
fault-injecting proxy (tests/job/fault_proxy.py), which answers a share `rate` of all requests with
a fault: 40 % 503 SlowDown, 30 % a response cut after the store applied the request, 15 % a
download cut mid-body, 15 % a 50 ms delay. Each run's token files are compared with the clean run's
(rate 0); a run that does not end with exit 0 and the same bytes is reported as such. The tokenizer
is the tests' tiny-pool (near-zero encode cost), so the time is the store's and the protocol's.

    python benchmarks/store_faults.py                       # rates 0, 0.1, 0.3, 0.5; 2 runs each
    python benchmarks/store_faults.py --rates 0,0.3 --repeats 1

One JSON line per run goes to benchmarks/results/store_faults.jsonl, with the conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions, start_local_ray  # noqa: E402

from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.job import run_tokenize  # noqa: E402
from pipeline.sources.sample_corpus import write_sample_corpus  # noqa: E402
from tests.job.fault_proxy import FaultProxy, random_faults  # noqa: E402

BUCKET = "bench-faults"


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto did not start")


def token_bytes(fs, out: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(f"{BUCKET}/{out}/tokens")}


def run_once(args, options: dict, endpoint: str, pattern: str, rate: float, index: int) -> dict:
    out = f"out-{int(rate * 100)}-{index}"
    with FaultProxy(endpoint, random_faults(rate) if rate else [], seed=1000 * index + int(rate * 100)) as proxy:
        cfg = TokenizeConfig(input=[pattern], output=f"s3://{BUCKET}/{out}", tokenizer="tiny-pool",
                             tokenizer_module="tests.job.tiny_tokenizer", num_actors=args.actors, batch_size=8,
                             progress=False, storage_options=proxy.storage_options(options))
        t = time.perf_counter()
        rc = run_tokenize(cfg)
        wall = time.perf_counter() - t
        faults, requests = len(proxy.faults()), len(proxy.log)
    return {"rate": rate, "run": index, "exit": rc, "wall_s": wall, "requests": requests, "faults": faults,
            "seen_rate": faults / max(1, requests), "output": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="0,0.1,0.3,0.5", help="fault rates to run (0 = the clean run)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=16)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--json", default=str(RESULTS / "store_faults.jsonl"))
    args = p.parse_args(argv)
    import s3fs

    stamp = conditions("cpu")
    print(f"# {json.dumps(stamp)}", flush=True)
    proc, endpoint = start_moto()
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
    try:
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(BUCKET)
        with tempfile.TemporaryDirectory() as local:
            write_sample_corpus(local, num_shards=args.shards, samples_per_shard=args.per_shard, max_side=64)
            for name in sorted(os.listdir(local)):
                fs.put(os.path.join(local, name), f"{BUCKET}/corpus/{name}")
        pattern = f"s3://{BUCKET}/corpus/*.tar"
        start_local_ray(num_cpus=4)
        rates = [float(r) for r in args.rates.split(",")]
        clean = None
        walls: dict[float, list[float]] = {}
        for rate in sorted(set([0.0, *rates])):
            for index in range(args.repeats):
                r = run_once(args, options, endpoint, pattern, rate, index)
                data = token_bytes(fs, r["output"])
                clean = clean if clean is not None else data
                r["same_bytes_as_clean"] = data == clean and len(data) == args.shards
                walls.setdefault(rate, []).append(r["wall_s"])
                print(f"rate {rate:.0%} run {index}: exit {r['exit']}, {r['wall_s']:.1f} s, {r['faults']} faults in "
                      f"{r['requests']} requests ({r['seen_rate']:.0%}), same bytes as clean: "
                      f"{r['same_bytes_as_clean']}", flush=True)
                append_jsonl(args.json, {"benchmark": "store_faults", **stamp, **r, "shards": args.shards,
                                         "per_shard": args.per_shard, "actors": args.actors})
        base = statistics.median(walls[0.0])
        for rate in sorted(walls):
            print(f"rate {rate:.0%}: median {statistics.median(walls[rate]):.1f} s = "
                  f"{statistics.median(walls[rate]) / base:.2f} x the clean time", flush=True)
    finally:
        proc.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
