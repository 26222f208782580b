"""TokenizeConfig (what the user asks for; every field is a CLI flag) and JobSpec (what the actors
need, resolved once on the driver: tokenizer config read from its JSON file, scale schedule and
image policy decided, the job fingerprint computed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.runner.batch_probe import DEFAULT_MAX_BATCH
from pipeline.sources.decode import DEFAULT_MAX_PIXELS
from pipeline.sources.tar_stream import DEFAULT_MAX_MEMBER_BYTES
from pipeline.sinks.schema import SCHEMA_VERSION
from pipeline.sinks.writer import DEFAULT_ROW_GROUP_ROWS
from pipeline.tokenizers.preprocess import MODES

VARIANTS = ("hflip", "vflip")


@dataclass
class TokenizeConfig:
    input: list[str] = field(default_factory=list)
    output: str = ""
    tokenizer: str = ""
    checkpoint: str | None = None
    tokenizer_config: str | None = None
    tokenizer_module: str | None = None
    image_size: int | None = None
    image_policy: str | None = None
    max_side: int | None = None
    tile_size: int | None = None
    overlap: int | None = None
    patch_nums: list[int] | None = None
    scale_superset: bool = False
    variants: list[str] = field(default_factory=list)
    num_actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    batch_size: int | str = 16     # or "auto": each actor measures the batch that fills its device
    max_batch_size: int = DEFAULT_MAX_BATCH  # the largest batch --batch-size auto tries
    decode_threads: int | None = None
    shards_per_actor: int = 2      # shards in flight per actor: the next one streams and decodes
                                   # while the current one encodes, and is encoded while it writes
    jpeg_draft: bool = False       # DCT-scaled JPEG decode (faster, other pixels: part of the fingerprint)
    gpu_decode: bool = False       # JPEGs decoded by nvJPEG on the actor's GPU (other pixels: fingerprint)
    channels_last: bool = False    # encoder weights/inputs in NHWC (GPU convs; numerics like --batch-size)
    compile: bool = False          # torch.compile the encoder (slow start; numerics like --batch-size)
    precision: str = "fp32"
    latent_dtype: str = "float16"  # continuous tokenizers: float16 | float32 (fp32 precision only)
    max_shard_retries: int = 3
    startup_wait_s: float = 0.0
    actor_start_timeout_s: float = 1800.0   # no actor placed by then: give up (autoscalers take minutes)
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS
    overwrite: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.input = [self.input] if isinstance(self.input, str) else list(self.input or [])
        self.variants = [v.strip() for item in (self.variants or []) for v in str(item).split(",") if v.strip()]
        if isinstance(self.batch_size, str) and self.batch_size.strip().lstrip("+").isdigit():
            self.batch_size = int(self.batch_size)  # "32" from a flag or a YAML string

    @property
    def auto_batch(self) -> bool:
        return isinstance(self.batch_size, str) and self.batch_size.strip().lower() == "auto"

    def validate(self) -> None:
        problems = []
        if not self.input:
            problems.append("--input is required")
        if not self.output:
            problems.append("--output is required")
        if not self.tokenizer:
            problems.append("--tokenizer is required")
        if self.image_policy is not None and self.image_policy not in MODES:
            problems.append(f"--image-policy must be one of {MODES}")
        if (self.tile_size is None) != (self.overlap is None) and self.tile_size is None:
            problems.append("--overlap needs --tile-size")
        unknown = sorted(set(self.variants) - set(VARIANTS) - {"orig"})
        if unknown:
            problems.append(f"unknown --variants {unknown}; known: {list(VARIANTS)}")
        if self.precision not in ("fp32", "bf16"):
            problems.append("--precision must be fp32 or bf16")
        if isinstance(self.batch_size, str) and not self.auto_batch:
            problems.append(f"--batch-size must be a number or 'auto', got {self.batch_size!r}")
        elif not self.auto_batch and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)):
            problems.append(f"--batch-size must be a whole number or 'auto', got {self.batch_size!r}")
        elif not self.auto_batch and self.batch_size < 1:
            problems.append("--batch-size must be >= 1")
        if self.max_batch_size < 1 or self.max_shard_retries < 0 or (self.num_actors is not None and self.num_actors < 1):
            problems.append("--max-batch-size and --num-actors must be >= 1, --max-shard-retries >= 0")
        if self.gpu_decode and self.jpeg_draft:
            problems.append("--gpu-decode and --jpeg-draft exclude each other (draft is a CPU decode option)")
        if self.gpu_decode and self.gpus_per_actor is not None and self.gpus_per_actor <= 0:
            problems.append("--gpu-decode needs GPU actors (--gpus-per-actor > 0)")
        if self.shards_per_actor < 1:
            problems.append("--shards-per-actor must be >= 1")
        if self.scale_superset and self.patch_nums and len(self.patch_nums) > 1:
            problems.append("--scale-superset stores every scale 1..N: give at most one --patch-nums value (N)")
        if problems:
            raise ValueError("invalid tokenize config: " + "; ".join(problems))

    def resolved_policy(self) -> str:
        if self.image_policy:
            return self.image_policy
        return "native" if self.tile_size else "center-crop"

    def extra_variants(self) -> list[str]:
        return [v for v in dict.fromkeys(self.variants) if v != "orig"]


def read_tokenizer_config(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read --tokenizer-config {path}: {e}") from e
    except ValueError as e:
        raise ValueError(f"--tokenizer-config {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"--tokenizer-config {path} must hold a JSON object (the constructor arguments)")
    return data


@dataclass
class JobSpec:
    """Everything an actor needs to tokenize a shard exactly like every other actor."""

    tokenizer: str
    checkpoint: str | None
    tokenizer_config: dict[str, Any] | None
    tokenizer_module: str | None
    preprocess: dict[str, Any]
    precision: str
    patch_nums: tuple[int, ...]
    tile_size: int | None
    overlap: int | None
    variants: tuple[str, ...]
    max_image_pixels: int
    max_member_bytes: int
    batch_size: int               # the actor's batch; with auto_batch, each actor replaces it by its probe's
    decode_threads: int
    row_group_rows: int
    output: str
    storage_options: dict[str, Any]
    jpeg_draft: bool = False
    gpu_decode: bool = False
    channels_last: bool = False
    compile: bool = False
    auto_batch: bool = False
    max_batch_size: int = DEFAULT_MAX_BATCH
    fingerprint: str = ""
    tokenizer_fingerprint: str = ""
    vocab_size: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def token_settings(self) -> dict[str, Any]:
        """The part of the job that decides the tokens (and so the data files' bytes)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tokenizer": self.tokenizer,
            "tokenizer_config": self.tokenizer_config,
            "preprocess": self.preprocess,
            "precision": self.precision,
            "patch_nums": list(self.patch_nums),
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "variants": list(self.variants),
            "max_image_pixels": self.max_image_pixels,
            "max_member_bytes": self.max_member_bytes,
            "row_group_rows": self.row_group_rows,
            # Only when on, so that jobs without it keep the fingerprint they always had.
            **({"jpeg_draft": True} if self.jpeg_draft else {}),
            **({"gpu_decode": True} if self.gpu_decode else {}),
        }

    def compute_fingerprint(self, tokenizer_fingerprint: str) -> str:
        blob = json.dumps({"tokenizer": tokenizer_fingerprint, "settings": self.token_settings()},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def replace(self, **changes: Any) -> "JobSpec":
        return dataclasses.replace(self, **changes)
