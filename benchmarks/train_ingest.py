"""Does the training job keep its model busy? The job's wall throughput over the same training
loop on tokens preloaded into one tensor, alternated in one run; and the two ways to read tokens.

    python benchmarks/train_ingest.py                       # 128 rows, batch 16, 200 steps, 2 repeats
    python benchmarks/train_ingest.py --variants crop:4,hflip --steps 120

1. tokens: the bundled sample corpus tokenized by the job (embedded default tokenizer, 64 px,
   155 tokens per row), `--rows` images in 4 shards (or `--tokens DIR` to reuse an output).
2. job: `pipeline.var.train.fit` (Ray Train, `--workers` CPU workers of 1 CPU): steps/s over steps
   10..N from the metrics rows' wall stamps (data waits, logging and everything else included;
   one checkpoint at the end, outside the window), and start-up = from calling fit to step 1 done.
3. preloaded: the same model, batch, AdamW, schedule and loss stepping in this process (torch
   threads = the worker's) on every ok row preloaded into one tensor, random batches; the same
   window. Job and preloaded runs alternate `--repeats` times; ratio = job / preloaded.
4. readers (`--readers`): the per-batch wait of Ray Data streaming (`read_parquet` + filter +
   `iter_batches`, re-run every epoch) and of the trainer's in-memory share
   (pipeline/var/token_share.py), first batch of an epoch vs the rest, over 5 epochs.

One JSON line goes to benchmarks/results/train_ingest.jsonl with the conditions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RAY_NODE_IP, RESULTS, append_jsonl, conditions  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.ray_connect import init_ray  # noqa: E402
from pipeline.runner.config import TokenizeConfig  # noqa: E402
from pipeline.runner.job import run_tokenize  # noqa: E402
from pipeline.sources.sample_corpus import write_sample_corpus  # noqa: E402
from pipeline.tokenizers import MultiScaleTokens, tokenizer_from_metadata  # noqa: E402
from pipeline.var.data import classes_of, labels_array, open_token_source, tokens_array  # noqa: E402
from pipeline.var.loading import load_var  # noqa: E402
from pipeline.var.recipe import apply_schedule, param_groups, token_loss  # noqa: E402
from pipeline.var.train import fit  # noqa: E402
from pipeline.var.train_config import TrainConfig  # noqa: E402

WINDOW_START = 10


def make_tokens(root: str, rows: int, variants: list[str]) -> str:
    shards = write_sample_corpus(os.path.join(root, "corpus"), num_shards=4, samples_per_shard=rows // 4, max_side=96)
    out = os.path.join(root, "tokens")
    cfg = TokenizeConfig(input=shards, output=out, tokenizer="default", num_actors=1, cpus_per_actor=1,
                         batch_size=16, variants=variants, progress=False)
    if run_tokenize(cfg) != 0:
        raise SystemExit("tokenizing the corpus failed")
    return out


def train_config(args: argparse.Namespace, tokens: str, runs: str, name: str) -> TrainConfig:
    return TrainConfig(tokens=[tokens], depth=args.depth, var_config={"embed_dim": args.embed_dim, "num_heads": args.heads},
                       batch_size=args.batch_size, max_steps=args.steps, lr=3e-3, num_workers=args.workers,
                       cpus_per_worker=1.0, storage_path=runs, name=name, ckpt_every=args.steps,
                       log_every=WINDOW_START, seed=0, all_variants=args.all_variants)


def run_job(args: argparse.Namespace, tokens: str, runs: str, name: str) -> dict:
    t0 = time.time()
    result = fit(train_config(args, tokens, runs, name))
    at = {r["step"]: r for r in result.history}
    window = at[args.steps]["time"] - at[WINDOW_START]["time"]
    return {"steps_per_s": (args.steps - WINDOW_START) / window, "startup_s": at[1]["time"] - t0,
            "data_wait_ms": 1000 * statistics.mean(r["data_wait_s"] for r in result.history if r["step"] > WINDOW_START)}


def preloaded_rows(tokens: str, null_label: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from pipeline.sinks.arrow_io import read_table
    import pyarrow.compute as pc

    source = open_token_source(tokens)
    parts, labels = [], []
    for path in source.files:
        table = read_table(source.filesystem, path, columns=["tokens", "label", "status"])
        table = table.filter(pc.equal(table["status"], "ok"))
        parts.append(tokens_array(table, source.seq_len))
        labels.append(labels_array(table, null_label))
    return (torch.from_numpy(np.concatenate(parts).astype(np.int64)), torch.from_numpy(np.concatenate(labels)),
            source.metadata)


def run_preloaded(args: argparse.Namespace, tokens: str) -> dict:
    """The worker's step (train_worker.train_step's operations) on one in-memory tensor."""
    t0 = time.time()
    cfg = train_config(args, tokens, "", "x").resolved()
    classes = classes_of(open_token_source(tokens))[0] or 1000  # as the job sizes its model
    all_tokens, all_labels, meta = preloaded_rows(tokens, null_label=classes)
    tok = tokenizer_from_metadata(meta)
    model = load_var(None, config={"patch_nums": tuple(meta["patch_nums"]), **cfg.var_constructor(),
                                   "num_classes": classes}, tokenizer=tok,
                     seed=0, init={"init_adaln": cfg.init_adaln, "init_adaln_gamma": cfg.init_adaln_gamma,
                                   "init_head": cfg.init_head}).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.twd), lr=cfg.lr, betas=tuple(cfg.betas))
    shapes = [(p, p) for p in model.patch_nums]
    g = torch.Generator().manual_seed(0)
    b = cfg.per_worker_batch
    stamps = []
    for step in range(args.steps):
        idx = torch.randint(0, len(all_labels), (b,), generator=g)
        target, labels = all_tokens[idx], all_labels[idx]
        x = tok.to_var_input(MultiScaleTokens.from_flat(target, shapes, model.patch_nums))
        apply_schedule(optimizer, step, peak_lr=cfg.lr, warmup_it=cfg.warmup_ratio * args.steps, max_it=args.steps,
                       wp0=cfg.wp0, wpe=cfg.wpe, twd=cfg.twd, twde=cfg.twde)
        loss = token_loss(model(labels, x), target, cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        stamps.append(time.time())
    return {"steps_per_s": (args.steps - WINDOW_START) / (stamps[-1] - stamps[WINDOW_START - 1]),
            "startup_s": stamps[0] - t0}


def reader_waits(tokens: str, batch: int, epochs: int = 5) -> dict:
    """Per-batch wait (ms): first batch of each epoch vs the others, Ray Data vs the in-memory share."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.data.expressions import col

    from pipeline.var.data import collate_arrow
    from pipeline.var.data_plan import make_plan, split_images
    from pipeline.var.token_share import ShareLoader, rows_per_image

    source = open_token_source(tokens)

    def summary(waits: list[list[float]]) -> dict:
        return {"epoch_start_ms": round(1000 * statistics.mean(w[0] for w in waits), 2),
                "in_epoch_ms": round(1000 * statistics.mean(x for w in waits for x in w[1:]), 3)}

    ds = ray.data.read_parquet(list(source.files), filesystem=PyFileSystem(FSSpecHandler(source.filesystem)),
                               columns=["tokens", "label", "status"]).filter(expr=col("status") == "ok")
    streamed = []
    for _ in range(epochs):
        waits, t = [], time.perf_counter()
        for table in ds.iter_batches(batch_size=batch, batch_format="pyarrow", drop_last=True):
            collate_arrow(table, source.seq_len, 1000)
            waits.append(time.perf_counter() - t)
            time.sleep(0.02)  # a "training step": lets a streaming reader work ahead, as in the job
            t = time.perf_counter()
        streamed.append(waits)
    rows = rows_per_image(source)
    plan = make_plan(source.files, rows, seed=0, world=1, per_rank_batch=batch, all_variants=False)
    loader = ShareLoader(source, split_images([len(r) for r in rows], 1)[0], plan, 0, source.seq_len, 1000)
    loader.rows  # the one read at start-up (overlapping model set-up in the job)
    in_memory = []
    for epoch in range(epochs):
        waits = []
        for i in range(plan.steps_per_epoch):
            t = time.perf_counter()
            loader.batch(epoch * plan.steps_per_epoch + i)
            waits.append(time.perf_counter() - t)
            time.sleep(0.02)
        in_memory.append(waits)
    loader.close()
    return {"ray_data_streaming": summary(streamed), "in_memory_share": summary(in_memory)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--variants", default="", help="tokenize with these --variants, e.g. crop:4,hflip")
    p.add_argument("--all-variants", action="store_true", help="train on every stored row")
    p.add_argument("--tokens", default=None, help="reuse this tokenize output")
    p.add_argument("--readers", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", default=str(RESULTS / "train_ingest.jsonl"))
    args = p.parse_args()

    torch.set_num_threads(1)  # a Ray worker of 1 CPU runs one intra-op thread
    record = {"benchmark": "train_ingest", "conditions": conditions("cpu"), "args": vars(args)}
    # As the job joins Ray (a local Ray announced in RAY_ADDRESS, so Ray Train's helpers find it).
    init_ray(None, num_cpus=max(2, args.workers + 1), include_dashboard=False, _node_ip_address=RAY_NODE_IP,
             logging_level="WARNING")
    with tempfile.TemporaryDirectory(prefix="train-ingest-") as tmp:
        tokens = args.tokens or make_tokens(tmp, args.rows, [v for v in args.variants.split(",") if v])
        jobs, preloaded = [], []
        for r in range(args.repeats):
            jobs.append(run_job(args, tokens, os.path.join(tmp, "runs"), f"r{r}"))
            preloaded.append(run_preloaded(args, tokens))
            print(f"repeat {r}: job {jobs[-1]['steps_per_s']:.1f} steps/s (start-up {jobs[-1]['startup_s']:.1f} s, "
                  f"data wait {jobs[-1]['data_wait_ms']:.2f} ms/step), preloaded {preloaded[-1]['steps_per_s']:.1f} "
                  f"steps/s (start-up {preloaded[-1]['startup_s']:.1f} s): ratio "
                  f"{jobs[-1]['steps_per_s'] / preloaded[-1]['steps_per_s']:.3f}", flush=True)
        record.update(job=jobs, preloaded=preloaded,
                      ratios=[round(j["steps_per_s"] / q["steps_per_s"], 3) for j, q in zip(jobs, preloaded)])
        if args.readers:
            record["readers"] = reader_waits(tokens, args.batch_size // args.workers)
            print("readers:", record["readers"])
    print(f"job / preloaded wall throughput (steps {WINDOW_START}..{args.steps}): {record['ratios']}")
    append_jsonl(args.json, record)


if __name__ == "__main__":
    main()
