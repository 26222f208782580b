"""Is the tokenize job as fast as its encoder? Measured in one run on one machine:

  (a) the bare encoder: `tok.encode` on pre-decoded, pre-resized tensors already on the device,
      at the job's batch size and thread count (one warm-up batch excluded);
  (b) the whole job: `run_tokenize` on a private local Ray (one actor, the real job path: tar
      stream, JPEG decode, resize/crop, encode, Parquet build, commit with manifest) over
      WebDataset shards of the same images, from the first shard handed out to the last commit
      (Ray start-up and the actor's model load are reported apart, as `startup_s`);

and prints b/a (goal >= 0.90) with the profile that explains it:

  encoder_busy      share of the job's time the encoder was encoding (1 - idle share)
  encoder_speed     the encoder's own speed inside the job relative to (a): below 1 when decode
                    threads compete with it for the same cores
  decode_cpu_share  CPU seconds of JPEG decode + resize as a share of the actor's CPU budget
  stalls            where the encoder's idle time went: waiting for decoded images inside a
                    shard, first batch of the first shard, gaps between shards (scheduling and
                    writes not hidden)

    python benchmarks/pipeline_efficiency.py                      # small VAR VQ-VAE (ch 32), 256², CPU
    python benchmarks/pipeline_efficiency.py --images 32 --shards 2   # quick check
    python benchmarks/pipeline_efficiency.py --device cuda --config '{}' --checkpoint vae_ch160v4096z32.pth \\
        --precision bf16 --channels-last --batch-size 64 --images 4096 --shards 8 --cpus-per-actor 8

One JSON line per run goes to benchmarks/results/pipeline_efficiency.jsonl, with the conditions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, append_jsonl, conditions, shard_pattern, start_local_ray, write_jpeg_corpus  # noqa: E402

import torch  # noqa: E402

from pipeline.runner.actor import apply_speed_options  # noqa: E402
from pipeline.runner.build import build_tokenizer, plan_job  # noqa: E402
from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.job import run_tokenize  # noqa: E402
from pipeline.runner.shard_task import batched, prepare_sample  # noqa: E402
from pipeline.sources.listing import expand_shards  # noqa: E402
from pipeline.sources.tar_stream import iter_samples  # noqa: E402

SMALL_VAR = {"ch": 32, "vocab_size": 4096, "z_channels": 32}


def job_config(args: argparse.Namespace, pattern: str, out: str, tok_json: str | None) -> TokenizeConfig:
    return TokenizeConfig(
        input=[pattern], output=out, tokenizer=args.tokenizer, checkpoint=args.checkpoint,
        tokenizer_config=tok_json, image_size=args.size, batch_size=args.batch_size, precision=args.precision,
        num_actors=1, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=1 if args.device == "cuda" else 0,
        decode_threads=args.decode_threads, shards_per_actor=args.shards_per_actor, jpeg_draft=args.jpeg_draft,
        gpu_decode=args.gpu_decode,
        channels_last=args.channels_last, compile=args.compile, progress=False, overwrite=True,
        audit_fraction=args.audit_fraction)


def bare_encoder(cfg: TokenizeConfig, device: str, threads: int):
    """(a): every image decoded and preprocessed first; returns a function that times only the
    encoder over them (call it before and after (b): the machine's load drifts)."""
    torch.set_num_threads(threads)
    spec, _ = plan_job(cfg)
    tok = build_tokenizer(spec, device)
    apply_speed_options(tok, spec)
    tensors = []
    for shard in expand_shards(cfg.input):
        for raw in iter_samples(shard.url):
            sample, x = prepare_sample(tok, spec, raw)
            if x is not None:
                tensors.append(x)
    batches = [torch.cat(b).to(device) for b in batched(tensors, spec.batch_size)]

    def encode(x: torch.Tensor) -> None:
        out = tok.encode(x, patch_nums=spec.patch_nums, tile_size=spec.tile_size, overlap=spec.overlap)
        out.flat().cpu()  # waits for the device

    def timed() -> dict:
        t = time.perf_counter()
        encode(batches[0])
        warmup = time.perf_counter() - t
        t = time.perf_counter()
        for x in batches:
            encode(x)
        seconds = time.perf_counter() - t
        return {"images": len(tensors), "seconds": seconds, "img_per_s": len(tensors) / seconds,
                "warmup_s": warmup}

    def measure() -> dict:
        # In a thread of its own, like the job's encoder (a Ray actor thread): torch's OpenMP team
        # of the main thread spins while waiting (OMP_WAIT_POLICY unset), which on a loaded machine
        # costs up to 2x the CPU time and would make (a) look slower than the job's encoder.
        out: dict = {}
        worker = threading.Thread(target=lambda: out.update(timed()), name="bare-encoder")
        worker.start()
        worker.join()
        return out

    return measure


def whole_job(cfg: TokenizeConfig, num_gpus: int) -> dict:
    """(b): the real job on a private local Ray; the profile comes from the shards' results."""
    holder = {}
    t = time.perf_counter()
    start_local_ray(num_cpus=cfg.cpus_per_actor + 1, num_gpus=num_gpus)
    rc = run_tokenize(cfg, on_scheduler=lambda s: holder.setdefault("scheduler", s))
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"the tokenize job failed (exit {rc}); see its output above")
    outcome = holder["scheduler"].outcome
    slot = next(s for s in outcome.slots if s.info is not None)
    results = list(outcome.results.values())
    busy = slot.busy_s  # first shard handed out -> last shard's result (one actor, never starved)
    images = sum(r.images_ok for r in results)
    total = {k: sum(getattr(r, k) for r in results) for k in
             ("encode_s", "decode_s", "read_s", "write_s", "wait_input_s", "wait_encoder_s", "first_batch_s",
              "audit_s")}
    first = outcome.results[min(outcome.results)]  # the first shard handed out (shards go in name order)
    return {"images": images, "shards": len(results), "seconds": busy, "img_per_s": images / busy,
            "wall_s": wall, "startup_s": wall - busy, "device": slot.info.get("device"),
            "totals": total, "first_shard_first_batch_s": first.first_batch_s}


def audit_cost(cfg: TokenizeConfig, with_audit: dict, num_gpus: int) -> dict:
    """The job without the audit, alternated with two runs with it (the first is `with_audit`)."""
    plain_cfg = dataclasses.replace(cfg, audit_fraction=0.0)
    plain = [whole_job(plain_cfg, num_gpus)]
    audited = [with_audit, whole_job(cfg, num_gpus)]
    plain.append(whole_job(plain_cfg, num_gpus))
    rate = {k: sum(r["img_per_s"] for r in runs) / len(runs) for k, runs in (("plain", plain), ("audited", audited))}
    share = sum(r["totals"]["audit_s"] for r in audited) / sum(r["seconds"] for r in audited)
    result = {"plain_img_per_s": rate["plain"], "audited_img_per_s": rate["audited"],
              "audited_over_plain": rate["audited"] / rate["plain"], "audit_time_share": share}
    print(f"audit at {cfg.audit_fraction:g}: {rate['audited']:.3f} img/s vs {rate['plain']:.3f} without "
          f"(ratio {result['audited_over_plain']:.3f}); decoding the audited rows took {share:.2%} of the job's time")
    return result


def profile(a: dict, b: dict, cpus: float) -> dict:
    t = b["totals"]
    idle = max(0.0, b["seconds"] - t["encode_s"])
    in_job_rate = b["images"] / t["encode_s"] if t["encode_s"] else 0.0
    return {
        "encoder_busy": t["encode_s"] / b["seconds"],
        "encoder_speed_in_job_vs_bare": in_job_rate / a["img_per_s"] if a["img_per_s"] else None,
        "decode_cpu_share": t["decode_s"] / (b["seconds"] * cpus),
        "stage_seconds": {"encode": t["encode_s"], "decode_cpu": t["decode_s"], "read": t["read_s"],
                          "write": t["write_s"], "encoder_idle": idle},
        "idle_breakdown_s": {"waiting_for_decoded_images": t["wait_input_s"],
                             "first_shard_start": b["first_shard_first_batch_s"],
                             "between_shards": max(0.0, idle - t["wait_input_s"] - b["first_shard_first_batch_s"])},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="var-vqvae")
    p.add_argument("--config", default=json.dumps(SMALL_VAR),
                   help="tokenizer constructor config as JSON ('{}' = the released model); default: a small VAR VQ-VAE")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--max-side", type=int, default=640, help="long side of the corpus JPEGs is drawn in [0.15x, 1x]")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--cpus-per-actor", type=float, default=float(os.cpu_count() or 1),
                   help="the actor's CPUs = torch threads of both (a) and (b) (default: every core)")
    p.add_argument("--decode-threads", type=int, default=None)
    p.add_argument("--shards-per-actor", type=int, default=2, help="1 = no cross-shard overlap")
    p.add_argument("--jpeg-draft", action="store_true")
    p.add_argument("--gpu-decode", action="store_true", help="(b) decodes the JPEGs with nvJPEG on the GPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-repeat", action="store_true", help="measure (a) only before (b), not also after it")
    p.add_argument("--audit-fraction", type=float, default=0.01, help="the job's --audit-fraction (its default)")
    p.add_argument("--audit-compare", action="store_true",
                   help="also run (b) with --audit-fraction 0, alternated (b0, bF, b0, bF): the audit's cost")
    p.add_argument("--workdir", default=None, help="where the corpus and output go (default: a temp dir, removed)")
    p.add_argument("--json", default=str(RESULTS / "pipeline_efficiency.jsonl"))
    args = p.parse_args(argv)
    args.config = args.config if args.config not in ("", "{}") else None

    stamp = conditions(args.device)
    work = args.workdir or tempfile.mkdtemp(prefix="scaletok-bench-")
    try:
        paths = write_jpeg_corpus(os.path.join(work, "corpus"), args.shards, max(1, args.images // args.shards),
                                  args.max_side)
        tok_json = None
        if args.config:
            tok_json = os.path.join(work, "tokenizer.json")
            with open(tok_json, "w") as f:
                f.write(args.config)
        cfg = job_config(args, shard_pattern(paths), os.path.join(work, "out"), tok_json)
        threads = max(1, int(args.cpus_per_actor))
        print(f"# {json.dumps(stamp)}", flush=True)
        measure = bare_encoder(cfg, args.device, threads)
        a_runs = [measure()]
        print(f"(a) bare encoder: {a_runs[0]['images']} images in {a_runs[0]['seconds']:.2f} s = "
              f"{a_runs[0]['img_per_s']:.3f} img/s (warm-up batch {a_runs[0]['warmup_s']:.2f} s, excluded)", flush=True)
        b = whole_job(cfg, 1 if args.device == "cuda" else 0)
        print(f"(b) whole job:    {b['images']} images in {b['seconds']:.2f} s = {b['img_per_s']:.3f} img/s "
              f"(+ {b['startup_s']:.1f} s Ray and actor start-up, not counted)", flush=True)
        if not args.no_repeat:
            a_runs.append(measure())
            print(f"(a) again:        {a_runs[1]['img_per_s']:.3f} img/s", flush=True)
        a = {"images": a_runs[0]["images"], "img_per_s": sum(r["img_per_s"] for r in a_runs) / len(a_runs),
             "runs": a_runs}
        audit = audit_cost(cfg, b, 1 if args.device == "cuda" else 0) if args.audit_compare else None
        prof = profile(a, b, args.cpus_per_actor)
        ratio = b["img_per_s"] / a["img_per_s"]
        print(f"ratio b/a = {ratio:.3f}   (goal >= 0.90; a = mean of the runs before and after b)")
        print(f"  encoder busy {prof['encoder_busy']:.1%} of the job's time; its speed in the job "
              f"{prof['encoder_speed_in_job_vs_bare']:.1%} of bare; decode used {prof['decode_cpu_share']:.1%} "
              f"of the actor's CPU")
        print("  stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in prof["stage_seconds"].items()))
        print("  encoder idle: " + ", ".join(f"{k} {v:.2f} s" for k, v in prof["idle_breakdown_s"].items()))
        record = {"benchmark": "pipeline_efficiency", **stamp, "tokenizer": args.tokenizer,
                  "config": json.loads(args.config) if args.config else "released",
                  "checkpoint": args.checkpoint, "size": args.size, "batch_size": args.batch_size,
                  "precision": args.precision, "cpus_per_actor": args.cpus_per_actor,
                  "decode_threads": cfg.decode_threads or max(2, threads), "shards_per_actor": args.shards_per_actor,
                  "jpeg_draft": args.jpeg_draft, "gpu_decode": args.gpu_decode, "channels_last": args.channels_last, "compile": args.compile,
                  "corpus": {"images": b["images"], "shards": args.shards, "format": "jpg", "max_side": args.max_side},
                  "job_path": "run_tokenize on a private local Ray, 1 actor",
                  "bare_encoder": a, "job": b, "ratio": ratio, "profile": prof,
                  "audit_fraction": args.audit_fraction, "audit_cost": audit}
        append_jsonl(args.json, record)
        print(f"appended to {args.json}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
