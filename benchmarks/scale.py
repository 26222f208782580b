"""1 billion images on paper: what the job's control plane costs at 10^6 shards, measured here and
extrapolated (benchmarks/RESULTS.md section 7).

    python benchmarks/scale.py                                  # 1 M manifests (~23 GB of temp disk)
    python benchmarks/scale.py --manifests 100000 --stats-manifests 5000 --request-shards 2,4

(a) resume planning: N committed shards (scheduling.write_manifests: the real manifest layout
    with a 4 096-code histogram, 22.6 KB, and an empty published data file each) in a temp dir,
    then one listing of each directory and `plan_resume` over N + 10 % input shards: seconds, the
    resident memory growth, and (a second, traced call) tracemalloc's peak. The page cache cannot
    hold N = 10^6 manifests (22.6 GB) on this 23 GiB VM, so the reads are partly cold.
(b) the end-of-job statistics pass the driver runs now (`read_all_manifests` of every manifest,
    then `build_stats`), at --stats-manifests: seconds, and the bytes the parsed manifests hold.
(c) driver memory per pending shard (`expand_shards` + the scheduler's queue) and per finished
    shard (its `ShardResult`, kept in `ScheduleOutcome.results`), traced with tracemalloc.
(d) object-store requests per shard: the real job (local Ray, --tokenizer bench-trivial) from and
    to a moto S3 server on loopback, whose access log is counted by method and key prefix; two
    runs with different shard counts, so per shard = difference / shard difference and the rest
    is per job.
One JSON line per part goes to benchmarks/results/scale.jsonl.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions  # noqa: E402
from scheduling import write_manifests, write_tiny_shards  # noqa: E402

import psutil  # noqa: E402

from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.job import run_tokenize  # noqa: E402
from pipeline.runner.shard_task import ShardResult  # noqa: E402
from pipeline.runner.stats import build_stats  # noqa: E402
from pipeline.sinks.manifest import data_sizes, iter_manifests, read_all_manifests  # noqa: E402
from pipeline.sinks.resume import plan_resume  # noqa: E402
from pipeline.sinks.writer import OutputLayout  # noqa: E402
from pipeline.sources.listing import expand_shards  # noqa: E402

FINGERPRINT = "f" * 32


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(fn(), seconds, peak resident-set growth in bytes, sampled every 20 ms)."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t
        stop.set()
        thread.join()
    return out, seconds, max(peak[0], proc.memory_info().rss) - base


def traced_bytes(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """(fn(), bytes its result still holds afterwards, peak bytes while it ran), by tracemalloc."""
    tracemalloc.start()
    try:
        out = fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, current, peak


WIDTH = 7  # shard numbers: train-0000000 .. train-1099999 (brace expansion pads to the longer bound)


def shard_name(i: int) -> str:
    return f"train-{i:0{WIDTH}d}"


def input_pattern(count: int) -> str:
    return f"s3://bucket/train/train-{{{0:0{WIDTH}d}..{count - 1:0{WIDTH}d}}}.tar"


def existing_manifests(layout: OutputLayout) -> int:
    try:
        return sum(1 for _ in os.scandir(layout.manifest_dir))
    except FileNotFoundError:
        return 0


def planning(count: int, work: str, vocab: int) -> dict[str, Any]:
    layout = OutputLayout(os.path.join(work, f"resume-{count}"))
    names = [shard_name(i) for i in range(count)]
    generate_s = None
    if existing_manifests(layout) != count:  # --work-dir keeps them between runs (generation: minutes)
        t = time.perf_counter()
        write_manifests(layout, names, FINGERPRINT, vocab)
        generate_s = time.perf_counter() - t
    size = os.path.getsize(layout.manifest_path(names[-1]))
    shards = expand_shards([input_pattern(count + count // 10)])  # 10 % still to do
    t = time.perf_counter()
    listed = len(layout.list_dir(layout.manifest_dir, ".json"))
    list_manifests_s = time.perf_counter() - t
    t = time.perf_counter()
    published = len(data_sizes(layout))
    list_tokens_s = time.perf_counter() - t
    # --check-data size: listing and manifests (the hash check's cost is per file and per byte:
    # benchmarks/scheduling.py measures it).
    plan, plan_s, plan_rss = peak_rss_growth(lambda: plan_resume(layout, shards, FINGERPRINT, "size"))
    _, _, plan_peak = traced_bytes(lambda: plan_resume(layout, shards, FINGERPRINT, "size"))  # again, traced
    if not (listed == published == count and plan.done == count and len(plan.todo) == len(shards) - count):
        raise SystemExit(f"planning saw {listed} manifests, {published} data files, {plan.done} done, "
                         f"{len(plan.todo)} to do; expected {count} and {len(shards) - count}")
    return {"part": "planning", "manifests": count, "input_shards": len(shards), "manifest_bytes": size,
            "vocab": vocab, "generate_s": generate_s, "list_manifests_s": list_manifests_s,
            "list_tokens_s": list_tokens_s, "plan_resume_s": plan_s, "plan_resume_rss_growth_bytes": plan_rss,
            "plan_resume_traced_peak_bytes": plan_peak,
            "layout": layout.root}


def stats_pass(root: str, count: int, total: int) -> dict[str, Any]:
    """What run_tokenize does at the end: the manifests streamed (`iter_manifests`, 2 000 at a
    time) into build_stats; and, for comparison, what holding them all at once would take."""
    layout = OutputLayout(root)
    names = [shard_name(i) for i in range(count)]
    shards = expand_shards([input_pattern(count)])
    t = time.perf_counter()
    _, _, streamed_peak = traced_bytes(lambda: build_stats(shards, iter_manifests(layout, names), FINGERPRINT,
                                                           None, 1.0, 0))
    streamed_s = time.perf_counter() - t
    _, held, _ = traced_bytes(lambda: read_all_manifests(layout, names))  # the old way, traced
    return {"part": "stats_pass", "manifests_read": count, "manifests_in_output": total,
            "streamed_stats_s": streamed_s, "streamed_peak_bytes": streamed_peak,
            "parsed_manifests_bytes": held, "bytes_per_parsed_manifest": held / count}


def driver_memory(count: int) -> dict[str, Any]:
    def pending() -> Any:  # the job's shard list and the scheduler's queue of the same Shard objects
        shards = expand_shards([input_pattern(count)])
        return shards, collections.deque(shards)
    _, pending_bytes, _ = traced_bytes(pending)
    finished_count = min(count, 100_000)

    def finished() -> dict[str, ShardResult]:  # what ScheduleOutcome.results keeps per shard
        return {shard_name(i): ShardResult(
            shard=shard_name(i), ok=True, commit="created", rows=1000, samples=1000,
            images_ok=1000, status_counts={"ok": 998, "decode_error": 2}, duration_s=1.2, encode_s=0.6,
            worker={"pid": 1234, "host": "gpu-node-17", "node": "0" * 56, "device": "cuda", "batch_size": 256})
            for i in range(finished_count)}
    _, finished_bytes, _ = traced_bytes(finished)
    return {"part": "driver_memory", "pending_shards": count, "bytes_per_pending_shard": pending_bytes / count,
            "finished_shards": finished_count, "bytes_per_finished_shard": finished_bytes / finished_count}


# ------------------------------------------------------------------ (d) requests on an S3 server
PROBE = re.compile(r"^\d{14}")  # <UTC timestamp><hex>: the name a run's probe object gets
ACCESS = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (/[^ ]*) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d{3})')


def classify(method: str, target: str, bucket: str) -> str:
    """'METHOD what' for one request line; what = input, tokens, _manifest, _attempts, a job file,
    the output's conditional-write probe, or LIST <prefix> (shard names and run prefixes folded)."""
    path, _, query = target.partition("?")
    key = path[len(f"/{bucket}"):].lstrip("/") if path.startswith(f"/{bucket}") else path
    key = re.sub(r"^(out|corpus)-\d+(/|$)", r"\1\2", key)
    if method == "GET" and ("list-type" in query or (not key and "prefix" in query)):
        prefix = re.search(r"prefix=([^&]*)", query)
        prefix = re.sub(r"^(out|corpus)-\d+", r"\1", (prefix.group(1) if prefix else "").replace("%2F", "/"))
        return f"LIST {prefix}"
    if method == "POST" and "delete" in query:
        return "DELETE (batch)"
    if "uploads" in query or "uploadId" in query:
        return f"{method} multipart"
    if key.startswith("corpus/"):
        return f"{method} input"
    for kind in ("_manifest", "tokens", "_attempts", "_tmp", "_probe"):
        if key.startswith(f"out/{kind}/"):
            return f"{method} {kind}"
    name = key.rsplit("/", 1)[-1]
    if PROBE.match(name):
        name = "probe"  # the output's conditional-write check (one per job)
    return f"{method} {name or '(bucket)'}"


def count_requests(log_text: str, bucket: str) -> collections.Counter:
    return collections.Counter(classify(method, target, bucket) for method, target, _ in ACCESS.findall(log_text))


def s3_requests(work: str, shard_counts: list[int], images_per_shard: int) -> dict[str, Any]:
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = os.path.join(work, "moto.log")
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(key, value)
        options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint}}
        fs = s3fs.S3FileSystem(use_listings_cache=False, **options)
        deadline = time.time() + 30
        while True:
            try:
                fs.mkdir("scaletok-bench")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        runs = {}
        for count in shard_counts:
            local = os.path.join(work, f"shards-{count}")
            write_tiny_shards(local, count)
            for name in sorted(os.listdir(local)):
                fs.put(os.path.join(local, name), f"scaletok-bench/corpus-{count}/{name}")
            log.flush()
            start = os.path.getsize(log_path)
            cfg = TokenizeConfig(input=[f"s3://scaletok-bench/corpus-{count}/tiny-{{000000..{count - 1:06d}}}.tar"],
                                 output=f"s3://scaletok-bench/out-{count}", tokenizer="bench-trivial",
                                 tokenizer_module="benchmarks.trivial_tokenizer", batch_size=1, num_actors=1,
                                 cpus_per_actor=1, gpus_per_actor=0, progress=False, storage_options=options)
            if run_tokenize(cfg) != 0:
                raise SystemExit(f"the S3 job over {count} shards failed")
            time.sleep(1.0)  # the server's last lines
            with open(log_path) as f:
                f.seek(start)
                runs[count] = count_requests(f.read(), "scaletok-bench")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
    low, high = min(shard_counts), max(shard_counts)
    per_shard = {k: (runs[high][k] - runs[low][k]) / (high - low) for k in set(runs[high]) | set(runs[low])}
    per_job = {k: runs[low][k] - per_shard[k] * low for k in per_shard}
    return {"part": "requests", "shard_counts": shard_counts, "images_per_shard": images_per_shard,
            "runs": {str(c): dict(sorted(r.items())) for c, r in runs.items()},
            "per_shard": {k: round(v, 3) for k, v in sorted(per_shard.items()) if abs(v) > 1e-9},
            "per_job": {k: round(v, 3) for k, v in sorted(per_job.items()) if abs(v) > 1e-9}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", type=int, default=1_000_000, help="committed shards for (a); 0 skips (a), (b)")
    p.add_argument("--stats-manifests", type=int, default=20_000, help="manifests read whole in (b)")
    p.add_argument("--vocab", type=int, default=4096, help="codebook size of the manifests' histograms")
    p.add_argument("--pending", type=int, default=1_000_000, help="pending shards traced in (c)")
    p.add_argument("--request-shards", default="2,6", help="two shard counts for (d); empty skips (d)")
    p.add_argument("--work-dir", default=None,
                   help="keep the generated manifests here and reuse them on the next run (default: a temp dir, removed)")
    p.add_argument("--json", default=str(RESULTS / "scale.jsonl"))
    args = p.parse_args(argv)
    stamp = {"benchmark": "scale", **conditions("cpu")}
    print(f"# {json.dumps(stamp)}", flush=True)
    work = args.work_dir or tempfile.mkdtemp(prefix="scaletok-scale-")
    os.makedirs(work, exist_ok=True)

    def report(record: dict[str, Any]) -> dict[str, Any]:
        print(json.dumps(record), flush=True)
        append_jsonl(args.json, {**stamp, **record})
        return record
    try:
        report(driver_memory(args.pending))
        if args.request_shards:
            requests_dir = tempfile.mkdtemp(prefix="requests-", dir=work)
            try:
                report(s3_requests(requests_dir, [int(c) for c in args.request_shards.split(",")], 1))
            finally:
                shutil.rmtree(requests_dir, ignore_errors=True)
        if args.manifests:
            plan = report(planning(args.manifests, work, args.vocab))
            report(stats_pass(plan["layout"], min(args.stats_manifests, args.manifests), args.manifests))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
