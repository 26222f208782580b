"""`scaletok demo` / `make demo`: the main job end to end on the bundled sample corpus.

Steps: write the sample corpus (real photos from scikit-image) as WebDataset shards, tokenize it
with the tokenize job on a local Ray (the same code path as a cluster run), check the output with
`verify`, save a picture of the stored tokens decoded at every scale, train a small VAR on the
tokens with Ray Train for a few steps and sample class-conditional images from it.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tarfile

import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.cli import job_main
from pipeline.errors import JobFailed, checking_inputs
from pipeline.runner.config import TokenizeConfig
from pipeline.runner.job import OutputConflict, run_tokenize
from pipeline.sinks.reader import ok_rows, read_metadata, row_tokens
from pipeline.runner.verify import verify_output
from pipeline.sources.sample_corpus import write_sample_corpus
from pipeline.tokenizers import MultiScaleTokens, TokenizerMismatch, tokenizer_from_metadata
from pipeline.viz import scale_grid, to_uint8

# The embedded default: a small VAR multi-scale VQ-VAE trained on offline photos, shipped in
# pipeline/assets (see `make default-tokenizer`). --tokenizer picks any other registered name.
DEMO_TOKENIZER = "default"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    p.add_argument("--num-shards", type=int, default=4, help="sample corpus shards to write (default 4)")
    p.add_argument("--samples-per-shard", type=int, default=16, help="images in each corpus shard (default 16)")
    p.add_argument("--max-side", type=int, default=384, help="longest side of the corpus images in pixels (default 384)")
    p.add_argument("--num-actors", type=int, default=1, help="tokenizer actors on the local Ray (default 1)")
    p.add_argument("--train-steps", type=int, default=20, help="VAR training steps (0 skips training)")
    p.add_argument("--tokenizer", default=DEMO_TOKENIZER, help="registered tokenizer name (default: the embedded default)")
    p.add_argument("--tokenizer-config", default=None, help="JSON file of the tokenizer's constructor config")
    p.add_argument("--checkpoint", default=None, help="tokenizer weights (default: the name's own)")


def tokenize_corpus(args: argparse.Namespace, shards: list[str]) -> str:
    output = os.path.join(args.out, "tokens")
    cfg = TokenizeConfig(input=shards, output=output, tokenizer=args.tokenizer, checkpoint=args.checkpoint,
                         tokenizer_config=args.tokenizer_config, num_actors=args.num_actors, cpus_per_actor=0.5,
                         batch_size=8, overwrite=True)
    code = run_tokenize(cfg)
    if code != 0:
        raise JobFailed(f"tokenize job failed (exit {code})")
    report = verify_output(output, shards)
    if not report.clean:
        raise JobFailed(f"verify found problems:\n{report.format()}")
    return output


def shard_images(shard: str, keys: list[str]) -> list[Image.Image]:
    """The image members of `keys` from a local tar, in the order of `keys`."""
    found: dict[str, Image.Image] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.rpartition(".")
            if key in keys and ext in ("jpg", "png"):
                found[key] = Image.open(io.BytesIO(tar.extractfile(member).read()))
    return [found[k] for k in keys]


def picture_of_stored_tokens(output: str, shard: str, path: str, checkpoint: str | None, count: int = 4) -> None:
    """Input images next to their stored tokens decoded after each scale."""
    files = sorted(glob.glob(os.path.join(output, "tokens", "*.parquet")))
    meta = read_metadata(files[0])
    try:
        tok = tokenizer_from_metadata(meta, checkpoint)
    except TokenizerMismatch as e:
        raise JobFailed(f"the demo tokenizer does not match the stored tokens: {e}") from e
    table = ok_rows(pq.read_table(files[0])).slice(0, count)
    batch = [row_tokens(table, i, tuple(meta["patch_nums"])) for i in range(table.num_rows)]
    tokens = MultiScaleTokens(grids=[torch.cat(g) for g in zip(*(t.grids for t in batch))],
                              patch_nums=batch[0].patch_nums)
    originals = to_uint8(tok.preprocess(shard_images(shard, table["key"].to_pylist())))
    per_scale = [to_uint8(tok.decode(tokens, upto=k)) for k in range(1, len(tokens.grids) + 1)]
    scale_grid(originals, per_scale, [f"{h}x{w}" for h, w in tokens.scale_shapes]).save(path)


def train_and_sample(args: argparse.Namespace, tokens: str) -> tuple[str, str]:
    from jobs.sample import main as sample_main
    from pipeline.var.train import fit
    from pipeline.var.train_config import TrainConfig

    result = fit(TrainConfig(tokens=tokens, depth=2, var_config={"embed_dim": 64, "num_heads": 2}, batch_size=8,
                             max_steps=args.train_steps, lr=3e-3, num_workers=1,
                             storage_path=os.path.abspath(os.path.join(args.out, "runs")), name="demo",
                             ckpt_every=max(1, args.train_steps // 2), log_every=1))
    samples = os.path.join(args.out, "samples.png")
    code = sample_main(["--checkpoint", result.run_dir, "--classes", "0,1,2", "--per-class", "4",
                        "--top-k", "100", "--out", samples])
    if code != 0:
        raise JobFailed(f"sampling failed (exit {code})")
    return result.run_dir, samples


def run(args: argparse.Namespace) -> int:
    corpus = os.path.join(args.out, "corpus")
    with checking_inputs(FileExistsError):
        os.makedirs(args.out, exist_ok=True)
        shards = write_sample_corpus(corpus, num_shards=args.num_shards, samples_per_shard=args.samples_per_shard,
                                     max_side=args.max_side)
    steps = 5 if args.train_steps else 3
    print(f"[1/{steps}] sample corpus: {len(shards)} shards in {corpus}")
    with checking_inputs(OutputConflict):  # the tokenizer flags are checked as the job plans
        output = tokenize_corpus(args, shards)
    print(f"[2/{steps}] tokenized into {output} (verify: clean)")
    path = os.path.join(args.out, "scales.png")
    picture_of_stored_tokens(output, shards[0], path, args.checkpoint)
    print(f"[3/{steps}] stored tokens decoded at every scale: {path}")
    run_dir = None
    if args.train_steps:
        run_dir, samples = train_and_sample(args, output)
        print(f"[4/{steps}] trained a VAR for {args.train_steps} steps: {run_dir} (metrics.jsonl, metrics.png)")
        print(f"[5/{steps}] samples: {samples}")
    from pipeline.report import build_report

    report = build_report(output, run_dir=run_dir, sample_images=8)
    print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m jobs.demo", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
