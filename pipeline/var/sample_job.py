"""Evaluation-scale sampling on a Ray cluster: N images per class into the ADM evaluation `.npz`.

The work is cut into chunks of `chunk_size` images (class-major order: class c's images are
consecutive); chunk i is sampled as one batch from a generator seeded with (seed, i). So a chunk's
images depend only on the model, the settings, its labels and its index, never on which actor ran
it or how many there were (on the same kind of device with the same threads per actor: kernels
may round otherwise). One actor per GPU of the cluster (CPU fallback: one per CPU, one thread
each) loads the model once and pulls chunks; the driver writes every finished chunk to
`<out>.chunks/chunk_<i>.npz` (atomic rename), so a rerun of the same command redoes only missing
chunks. At the end the chunks are joined, streaming, into `<out>`:

  arr_0   (N, H, W, 3) uint8, the images (what guided-diffusion's evaluator.py reads)
  arr_1   (N,) int64 class labels (ADM's class-conditional sample layout)
  tokens  (N, L) int64 the sampled token ids, scales flattened small -> large
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

CHUNK_SUFFIX = ".chunks"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from (no secrets: storage options travel apart)."""

    checkpoint: str
    tokenizer: str = "var-vqvae"                     # for an official .pth
    tokenizer_checkpoint: str | None = None
    tokenizer_config: dict[str, Any] | None = None   # for an official .pth


@dataclass(frozen=True)
class SampleSettings:
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    temperature: float = 1.0
    seed: int = 0
    more_smooth: bool = False


@dataclass(frozen=True)
class Chunk:
    index: int
    labels: tuple[int, ...]


OFFICIAL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")


def load_model(spec: ModelSpec, device: str = "cpu", storage_options: dict[str, Any] | None = None):
    """A training checkpoint/run directory (its tokenizer rebuilt from the record), or an official
    var_d*.pth with the tokenizer named in `spec`."""
    from pipeline.tokenizers import load_tokenizer
    from pipeline.var.loading import load_trained, load_var

    if spec.checkpoint.endswith(OFFICIAL_SUFFIXES):
        tok = load_tokenizer(spec.tokenizer, spec.tokenizer_checkpoint, spec.tokenizer_config or None, device=device)
        return load_var(spec.checkpoint, tokenizer=tok, device=device)
    return load_trained(spec.checkpoint, storage_options=storage_options,
                        tokenizer_checkpoint=spec.tokenizer_checkpoint, device=device)


def plan_chunks(classes: Sequence[int], per_class: int, chunk_size: int) -> list[Chunk]:
    labels = [int(c) for c in classes for _ in range(per_class)]
    return [Chunk(i // chunk_size, tuple(labels[i:i + chunk_size])) for i in range(0, len(labels), chunk_size)]


def chunk_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{int(seed)}/{int(index)}".encode()).digest()[:8], "little") >> 1


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, rounded (as torchvision's save_image)."""
    return images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample_chunk(model: Any, chunk: Chunk, settings: SampleSettings) -> dict[str, np.ndarray]:
    from pipeline.var.sampling import sample

    s = settings
    result = sample(model, len(chunk.labels), list(chunk.labels), cfg=s.cfg, top_k=s.top_k, top_p=s.top_p,
                    temperature=s.temperature, seed=chunk_seed(s.seed, chunk.index), more_smooth=s.more_smooth)
    return {"images": to_uint8_nhwc(result.images), "tokens": result.flat().cpu().numpy().astype(np.int64),
            "labels": np.asarray(chunk.labels, dtype=np.int64)}


class SampleWorker:
    """Ray actor body: the model once, then chunks."""

    def __init__(self, spec: ModelSpec, storage_secret: Any) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        options = storage_secret.resolve() if storage_secret is not None else {}
        self.model = load_model(spec, device, options)

    def run(self, chunk: Chunk, settings: SampleSettings) -> dict[str, np.ndarray]:
        return sample_chunk(self.model, chunk, settings)


# ------------------------------------------------------------------------------------ chunk files
def chunk_dir(out: str) -> str:
    return out + CHUNK_SUFFIX


def chunk_path(out: str, index: int) -> str:
    return os.path.join(chunk_dir(out), f"chunk_{index:06d}.npz")


def _atomic_savez(path: str, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def claim_chunk_dir(out: str, record: dict[str, Any]) -> None:
    """Create `<out>.chunks/` with the run's settings, or check that an existing one has the same
    (chunks of other settings must never be mixed into one .npz)."""
    directory = chunk_dir(out)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != record:
            differ = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
            raise ValueError(f"{directory} holds chunks of other settings ({', '.join(differ)} differ): use another "
                             f"--npz path, or delete {directory} to start over")
        return
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def join_chunks(out: str, chunks: Sequence[Chunk]) -> int:
    """The chunk files -> `out` (arr_0, arr_1, tokens), streaming: memory holds one chunk."""
    first = np.load(chunk_path(out, chunks[0].index))
    n = sum(len(c.labels) for c in chunks)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as tmp:
        arrays = {"arr_0": ((n, *first["images"].shape[1:]), np.uint8), "arr_1": ((n,), np.int64),
                  "tokens": ((n, first["tokens"].shape[1]), np.int64)}
        maps = {k: np.lib.format.open_memmap(os.path.join(tmp, f"{k}.npy"), mode="w+", dtype=d, shape=s)
                for k, (s, d) in arrays.items()}
        at = 0
        for c in chunks:
            data = np.load(chunk_path(out, c.index))
            m = len(c.labels)
            maps["arr_0"][at:at + m], maps["arr_1"][at:at + m], maps["tokens"][at:at + m] = (
                data["images"], data["labels"], data["tokens"])
            at += m
        for m in maps.values():
            m.flush()
        del maps
        partial = os.path.join(tmp, "out.npz")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # np.savez's layout
            for k in arrays:
                zf.write(os.path.join(tmp, f"{k}.npy"), f"{k}.npy")
        os.replace(partial, out)
    return n


# ------------------------------------------------------------------------------------------ driver
def default_actors() -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU of the cluster, else one per CPU."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return (gpus, 1.0) if gpus else (max(1, int(resources.get("CPU", 1))), 0.0)


def sample_to_npz(spec: ModelSpec, classes: Sequence[int], per_class: int, settings: SampleSettings, out: str, *,
                  chunk_size: int = 50, num_actors: int | None = None, storage_options: dict[str, Any] | None = None,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample every missing chunk on Ray actors, then join all chunks into `out`. Ray must be up."""
    import ray

    from pipeline.secrets import SecretOptions

    if per_class < 1 or chunk_size < 1 or not classes:
        raise ValueError("--per-class and --chunk-size must be >= 1, and at least one class is needed")
    chunks = plan_chunks(classes, per_class, chunk_size)
    record = {"model": asdict(spec), "settings": asdict(settings), "chunk_size": chunk_size,
              "labels": hashlib.sha256(json.dumps([c.labels for c in chunks]).encode()).hexdigest()[:16]}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    claim_chunk_dir(out, record)
    pending = [c for c in chunks if not os.path.exists(chunk_path(out, c.index))]
    actors_wanted, gpus = default_actors()
    count = min(num_actors or actors_wanted, len(pending))
    if pending:
        say(f"sampling {sum(len(c.labels) for c in pending)} images in {len(pending)} chunks on {count} "
            f"{'GPU' if gpus else 'CPU'} actor(s) ({len(chunks) - len(pending)} chunks already done)")
        actor_cls = ray.remote(num_gpus=gpus, num_cpus=1)(SampleWorker)
        secret = SecretOptions.put(storage_options)
        actors = [actor_cls.remote(spec, secret) for _ in range(count)]
        queue = list(pending)
        running: dict[Any, tuple[Any, Chunk]] = {}

        def hand_out(actor: Any) -> None:
            if queue:
                chunk = queue.pop(0)
                running[actor.run.remote(chunk, settings)] = (actor, chunk)

        for actor in actors:  # two chunks in flight per actor: the next one is queued while one runs
            hand_out(actor)
            hand_out(actor)
        done = 0
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, chunk = running.pop(ready[0])
            data = ray.get(ready[0])
            _atomic_savez(chunk_path(out, chunk.index), **data)
            done += 1
            say(f"chunk {chunk.index} done ({done}/{len(pending)})")
            hand_out(actor)
        for actor in actors:
            ray.kill(actor)
    n = join_chunks(out, chunks)
    return {"images": n, "chunks": len(chunks), "sampled_chunks": len(pending), "actors": count if pending else 0}
