"""What the job costs besides encoding: per-shard overhead and resume planning.

(a) per-shard overhead: `--shards` tiny shards (one 32x32 JPEG each) through the real job on two
    raylets started with `ray start` (one actor each, 1 CPU), with a near-zero-cost tokenizer
    (benchmarks/trivial_tokenizer.py). Everything a shard costs is then overhead: the driver's
    round trip, opening and untarring the shard, Parquet build, the commit (attempt file and
    manifest, each fsync'ed, then the rename that publishes the data file), progress reporting. Reported per shard as
      actor_ms_per_shard = actor time (shards in flight) summed over actors / shards   (goal <= 20)
      wall_ms_per_shard  = first dispatch -> last result, / shards (both actors together)
    for each `--shards-per-actor` value given (1 = the sequential path).
(b) resume planning: `--manifests` committed shards (real manifests: `build_manifest` with a
    `--vocab` codebook histogram, as commit_shard writes them, and their published data files) in
    a temp output; time to expand the input pattern and to decide which shards are done
    (`pipeline.sinks.resume.plan_resume`, what `run_tokenize` runs on a restart: one listing of
    _manifest/, each manifest's fingerprint, size and sha256, one listing of tokens/ with sizes),
    warm page cache. Goal <= 10 s for 100 000. Also with `--check-data hash` (every data file read
    and hashed; the files are empty here, so this is the per-file cost, to which the bytes add
    about 0.7 s per GB).

    python benchmarks/scheduling.py                                  # 1 000 shards, 100 000 manifests
    python benchmarks/scheduling.py --shards 100 --manifests 5000     # quick check

One JSON line per part goes to benchmarks/results/scheduling.jsonl, with the conditions.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions, two_raylets  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.job import run_tokenize  # noqa: E402
from pipeline.sinks.manifest import build_manifest, read_all_manifests  # noqa: E402
from pipeline.sinks.resume import plan_resume  # noqa: E402
from pipeline.sinks.writer import OutputLayout  # noqa: E402
from pipeline.sources.listing import expand_shards  # noqa: E402


def write_tiny_shards(directory: str, count: int) -> str:
    """`count` tars of one 32x32 JPEG each; returns their brace pattern."""
    os.makedirs(directory, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    for i in range(count):
        with tarfile.open(os.path.join(directory, f"tiny-{i:06d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(f"k{i:06d}.jpg")
            info.size, info.mtime = len(jpeg), 1704067200
            tar.addfile(info, io.BytesIO(jpeg))
    return os.path.join(directory, f"tiny-{{000000..{count - 1:06d}}}.tar")


def per_shard_overhead(args: argparse.Namespace, work: str, address: str, pattern: str, in_flight: int) -> dict:
    out = os.path.join(work, f"out-{in_flight}")
    cfg = TokenizeConfig(input=[pattern], output=out, tokenizer="bench-trivial",
                         tokenizer_module="benchmarks.trivial_tokenizer", batch_size=1, num_actors=2,
                         cpus_per_actor=1, gpus_per_actor=0, shards_per_actor=in_flight, address=address,
                         startup_wait_s=120, progress=False, overwrite=True)
    holder = {}
    t = time.perf_counter()
    rc = run_tokenize(cfg, on_scheduler=lambda s: holder.setdefault("scheduler", s))
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"the tokenize job failed (exit {rc})")
    outcome = holder["scheduler"].outcome
    results = list(outcome.results.values())
    n = len(results)
    steady = outcome.last_result_at - outcome.first_dispatch_at
    actor_s = sum(s.busy_s for s in outcome.slots)
    keys = ("duration_s", "encode_s", "write_s", "first_batch_s", "wait_encoder_s", "read_s")
    mean = {k: 1000 * sum(getattr(r, k) for r in results) / n for k in keys}
    median = {k: 1000 * float(np.median([getattr(r, k) for r in results])) for k in keys}
    nodes = {r.worker.get("node") for r in results}
    return {"shards": n, "shards_per_actor": in_flight, "actors": len([s for s in outcome.slots if s.info]),
            "nodes": len(nodes), "job_wall_s": wall, "steady_s": steady,
            "actor_ms_per_shard": 1000 * actor_s / n, "wall_ms_per_shard": 1000 * steady / n,
            "inside_actor_ms_per_shard": mean, "inside_actor_ms_per_shard_median": median}


def write_manifests(layout: OutputLayout, names: list[str], fingerprint: str, vocab: int) -> int:
    """What commit_shard writes for each shard (same JSON layout); returns bytes per manifest."""
    layout.makedirs()
    hist = np.random.default_rng(0).integers(0, 50, vocab)
    size = 0
    for name in names:
        text = json.dumps(build_manifest(
            shard=name, input_url=f"s3://bucket/train/{name}.tar", data=b"",
            rows=1000, status_counts={"ok": 1000}, samples=1000, fingerprint=fingerprint,
            tokenizer_fingerprint="0" * 32, histogram=hist, duration_s=12.5, attempt=0,
            attempt_id="20261206000000abcdef-0123456789ab", labels={"min": 0, "max": 999, "count": 1000},
            worker={"pid": 1, "host": "node-1", "node": "0" * 56, "device": "cuda"}), indent=1, sort_keys=True)
        with open(layout.manifest_path(name), "w") as f:
            f.write(text)
        open(layout.data_path(name), "wb").close()  # published (planning only lists tokens/)
        size = len(text)
    return size


def resume_planning(args: argparse.Namespace, work: str) -> dict:
    count = args.manifests
    fingerprint = "f" * 32
    layout = OutputLayout(os.path.join(work, "resume"))
    pattern = f"s3://bucket/train/train-{{000000..{count + count // 10 - 1:06d}}}.tar"  # 10 % still to do
    names = [f"train-{i:06d}" for i in range(count)]
    t = time.perf_counter()
    size = write_manifests(layout, names, fingerprint, args.vocab)
    generate_s = time.perf_counter() - t
    t = time.perf_counter()
    shards = expand_shards([pattern])
    expand_s = time.perf_counter() - t
    seconds = {}
    for check in ("size", "hash"):  # --check-data: sizes from one listing; + every data file's sha256
        t = time.perf_counter()
        plan = plan_resume(layout, shards, fingerprint, check)
        seconds[check] = time.perf_counter() - t
        assert len(plan.todo) == len(shards) - count and plan.done == count, (len(plan.todo), len(shards), count)
    plan_s = seconds["size"]
    record = {"manifests": count, "input_shards": len(shards), "manifest_bytes": size, "vocab": args.vocab,
              "generate_s": generate_s, "expand_input_s": expand_s, "plan_resume_s": plan_s,
              "plan_resume_hash_check_s": seconds["hash"], "data_file_bytes": 0,
              "time_to_plan_s": expand_s + plan_s, "page_cache": "warm (just written)"}
    if args.compare_full:  # the previous way: every manifest read and parsed whole
        t = time.perf_counter()
        full = read_all_manifests(layout)
        sum(1 for s in shards if full.get(s.name, {}).get("fingerprint") == fingerprint)
        record["read_all_manifests_s"] = time.perf_counter() - t
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=1000, help="tiny shards for (a); 0 skips (a)")
    p.add_argument("--shards-per-actor", default="1,2", help="values to run (a) with")
    p.add_argument("--manifests", type=int, default=100_000, help="manifests for (b); 0 skips (b)")
    p.add_argument("--vocab", type=int, default=4096, help="codebook size of the manifests' histograms")
    p.add_argument("--compare-full", action="store_true", help="also time reading every manifest whole")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=str(RESULTS / "scheduling.jsonl"))
    args = p.parse_args(argv)
    stamp = conditions("cpu")
    print(f"# {json.dumps(stamp)}", flush=True)
    work = args.workdir or tempfile.mkdtemp(prefix="scaletok-sched-")
    try:
        if args.manifests:
            r = resume_planning(args, work)
            print(f"(b) resume planning, {r['manifests']} manifests ({r['manifest_bytes']} B each) of "
                  f"{r['input_shards']} input shards: expand input {r['expand_input_s']:.2f} s + plan "
                  f"{r['plan_resume_s']:.2f} s = {r['time_to_plan_s']:.2f} s (goal <= 10 s); with the hash check "
                  f"(empty data files: the per-file cost) {r['plan_resume_hash_check_s']:.2f} s"
                  + (f"; reading every manifest whole: {r['read_all_manifests_s']:.2f} s" if args.compare_full else ""),
                  flush=True)
            append_jsonl(args.json, {"benchmark": "scheduling.resume_planning", **stamp, **r})
            shutil.rmtree(os.path.join(work, "resume"), ignore_errors=True)
        if args.shards:
            pattern = write_tiny_shards(os.path.join(work, "tiny"), args.shards)
            with two_raylets(cpus_per_node=2) as address:
                for in_flight in (int(v) for v in args.shards_per_actor.split(",")):
                    r = per_shard_overhead(args, work, address, pattern, in_flight)
                    inside = r["inside_actor_ms_per_shard_median"]
                    print(f"(a) {r['shards']} shards, {r['actors']} actors on {r['nodes']} raylets, "
                          f"{in_flight} in flight per actor: {r['actor_ms_per_shard']:.1f} actor-ms per shard "
                          f"(goal <= 20), {r['wall_ms_per_shard']:.1f} wall-ms per shard; inside the actor (median) "
                          f"{inside['duration_s']:.1f} ms (write {inside['write_s']:.1f}, encode "
                          f"{inside['encode_s']:.2f})", flush=True)
                    append_jsonl(args.json, {"benchmark": "scheduling.per_shard_overhead", **stamp, **r})
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
