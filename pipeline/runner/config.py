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
from pipeline.secrets import SecretOptions
from pipeline.sources.decode import DEFAULT_MAX_PIXELS
from pipeline.sources.folders import DEFAULT_IMAGES_PER_SHARD
from pipeline.sources.tar_stream import DEFAULT_MAX_MEMBER_BYTES
from pipeline.sinks.schema import CROP_VARIANT, FLIP_VARIANTS, SCHEMA_VERSION, parse_variants
from pipeline.sinks.resume import CHECK_MODES
from pipeline.sinks.writer import DEFAULT_ROW_GROUP_ROWS
from pipeline.images import MODES

VARIANTS = (*FLIP_VARIANTS, f"{CROP_VARIANT}:K")  # crop:K = K seeded random crops (VAR's training transform)


@dataclass
class TokenizeConfig:
    input: list[str] = field(default_factory=list, metadata={"help": (
        "WebDataset shard URL or pattern: path, file://, s3://, any fsspec URL; braces, globs, '::' lists")})
    output: str = field(default="", metadata={"help": "output directory or URL (tokens/, _manifest/, _stats.json go there)"})
    images_per_shard: int = field(default=DEFAULT_IMAGES_PER_SHARD, metadata={"help": (
        "class-folder input: images per virtual shard (files in sorted path order)")})
    image_column: str | None = field(default=None, metadata={"help": (
        "Parquet input: the column of encoded images, binary or struct<bytes, path> (default: found by name)")})
    label_column: str | None = field(default=None, metadata={"help": (
        "Parquet input: the integer label column (default: label, labels, cls, ... when present)")})
    key_column: str | None = field(default=None, metadata={"help": (
        "Parquet input: the key column (default: __key__/key, else the image's path, else the row index)")})
    audit_fraction: float = field(default=0.01, metadata={"help": (
        "reconstruction audit: decode this seeded fraction of the ok rows right after encoding and record "
        "PSNR/SSIM per scale in the manifests, _stats.json and the report (0 turns it off)")})
    tokenizer: str = field(default="", metadata={"help": "registry name, e.g. var-vqvae"})
    checkpoint: str | None = field(default=None, metadata={"help": (
        "weights file (.pth/.safetensors); seeded random weights without it")})
    tokenizer_config: str | None = field(default=None, metadata={"help": (
        "JSON file with the tokenizer's constructor arguments")})
    tokenizer_module: str | None = field(default=None, metadata={"help": (
        "extra module to import in every actor (registers plugin tokenizers)")})
    image_size: int | None = field(default=None, metadata={"help": (
        "side the image policy resizes/crops to (default: the tokenizer's)")})
    image_policy: str | None = field(default=None, metadata={"help": (
        "center-crop | resize | native (default: native with --tile-size, else center-crop)")})
    max_side: int | None = field(default=None, metadata={"help": (
        "native policy: shrink images whose longer side exceeds this")})
    tile_size: int | None = field(default=None, metadata={"help": "encode native-size images in tiles of this many pixels"})
    overlap: int | None = field(default=None, metadata={"help": "tile overlap in pixels"})
    patch_nums: list[int] | None = field(default=None, metadata={"help": (
        "scale schedule, e.g. 1,2,3,4,5,6,8,10,13,16 (default: the tokenizer's)")})
    scale_superset: bool = field(default=False, metadata={"help": (
        "store every scale 1..N (N = last of the schedule) so FlexVAR-style schedules can be sliced")})
    variants: list[str] = field(default_factory=list, metadata={"help": (
        "augmentation variants stored as extra rows (comma-separated): hflip, vflip, crop:K (K seeded random "
        "crops of VAR's training transform, each also flipped with hflip/vflip; needs --image-policy center-crop)")})
    seed: int = field(default=0, metadata={"help": (
        "seed of the crop:K variants: a crop's box derives from (seed, sample key, crop index)")})
    num_actors: int | None = field(default=None, metadata={"help": (
        "tokenizer actors (default: one per GPU, or one per --cpus-per-actor CPUs)")})
    gpus_per_actor: float | None = field(default=None, metadata={"help": (
        "GPUs per actor (default: 1 when the cluster has GPUs, else 0)")})
    cpus_per_actor: float = field(default=1.0, metadata={"help": "CPUs per actor (torch threads and decode threads)"})
    batch_size: int | str = field(default=16, metadata={"help": (
        "images per encoder call, or 'auto': each actor measures the batch that fills its device "
        "(doubling until out of memory, over 80% of GPU memory / half the free RAM, or no more img/s)")})
    max_batch_size: int = field(default=DEFAULT_MAX_BATCH, metadata={"help": "the largest batch --batch-size auto tries"})
    decode_threads: int | None = field(default=None, metadata={"help": (
        "image decode threads per actor (default: max(2, cpus-per-actor))")})
    # Two in flight by default: the next shard streams and decodes while the current one
    # encodes, and is encoded while the current one writes.
    shards_per_actor: int = field(default=2, metadata={"help": (
        "shards in flight per actor: while one encodes, the next is read and decoded and the previous "
        "one committed (1 trades that overlap for no queued shard at the tail)")})
    jpeg_draft: bool = field(default=False, metadata={"help": (
        "CPU: libjpeg's DCT-scaled decode before the resize (less decode CPU on large JPEGs; other pixels, "
        "so its own fingerprint)")})
    gpu_decode: bool = field(default=False, metadata={"help": (
        "decode JPEGs on the actor's GPU with nvJPEG (needs torchvision with CUDA; other pixels than "
        "Pillow, so its own fingerprint; non-JPEGs and images nvJPEG refuses go through Pillow)")})
    channels_last: bool = field(default=False, metadata={"help": (
        "encoder weights and inputs in NHWC memory format (faster GPU convolutions; kernels only, "
        "numerics like another --batch-size)")})
    compile: bool = field(default=False, metadata={"help": (
        "torch.compile the encoder (slow first batch; kernels only, numerics like another --batch-size)")})
    precision: str = field(default="fp32", metadata={"help": (
        "fp32 | bf16 encoder autocast (nearest-code search is always fp32)")})
    latent_dtype: str = field(default="float16", metadata={"help": (
        "continuous tokenizers (vitok): float16 | float32 storage of the latents (float32 needs --precision fp32)")})
    max_shard_retries: int = field(default=3, metadata={"help": (
        "retries of a shard whose attempt failed (unreadable, actor died, timed out, out of memory) "
        "before it is reported")})
    # A hung read (a stalled object store connection) or a hung actor must not stall the job forever.
    shard_timeout_s: float = field(default=3600.0, metadata={"help": (
        "an attempt still running after this many seconds fails (its actor is replaced) and the shard is "
        "retried; 0 disables the limit")})
    allow_unconditional_commit: bool = field(default=False, metadata={"help": (
        "commit on an output store that ignores conditional creates (If-None-Match), by check-then-write: "
        "exactly-once then only holds while no two attempts of one shard run at once (one job, no network "
        "partitions); without this flag such a store is refused")})
    # Bits rot after a commit: a rerun finds damaged data files and redoes those shards (sinks/resume.py).
    check_data: str = field(default="auto", metadata={"help": (
        "how a rerun checks committed data files against their manifests: size (one listing), hash "
        "(also the sha256 of every file: reads them all), or auto (hash on a local disk, size on object "
        "stores); a missing or damaged file is restored or its shard encoded again")})
    startup_wait_s: float = field(default=0.0, metadata={"help": (
        "wait up to this long for the whole actor pool before handing out shards (benchmarks)")})
    # Autoscalers take minutes to bring a node, hence the long default.
    actor_start_timeout_s: float = field(default=1800.0, metadata={"help": (
        "fail the job if not one tokenizer actor is placed and started within this many "
        "seconds (the cluster is full, or no node will ever fit one)")})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": (
        "decompression-bomb guard: larger images get status too_large")})
    max_member_bytes: int = field(default=DEFAULT_MAX_MEMBER_BYTES, metadata={"help": (
        "tar members larger than this are not read (status too_large)")})
    row_group_rows: int = field(default=DEFAULT_ROW_GROUP_ROWS, metadata={"help": "Parquet row group size in rows"})
    overwrite: bool = field(default=False, metadata={"help": (
        "delete an output written by a different tokenizer/config instead of refusing")})
    storage_options: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "fsspec option for remote input/output, e.g. endpoint_url=http://... (also --storage-option)")})
    address: str | None = field(default=None, metadata={"help": (
        "Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")})
    progress: bool = field(default=True, metadata={"help": "show the progress bar"})

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
        try:
            _, crops = parse_variants(self.variants)
        except ValueError as e:
            problems.append(f"--variants: {e}")
            crops = 0
        if crops and self.resolved_policy() != "center-crop":
            problems.append("--variants crop:K is VAR's training transform: it needs --image-policy center-crop")
        if crops and self.gpu_decode:
            problems.append("--variants crop:K crops with Pillow's LANCZOS: decode on the CPU (no --gpu-decode)")
        if self.precision not in ("fp32", "bf16"):
            problems.append("--precision must be fp32 or bf16")
        if isinstance(self.batch_size, str) and not self.auto_batch:
            problems.append(f"--batch-size must be a number or 'auto', got {self.batch_size!r}")
        elif not self.auto_batch and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)):
            problems.append(f"--batch-size must be a whole number or 'auto', got {self.batch_size!r}")
        elif not self.auto_batch and self.batch_size < 1:
            problems.append("--batch-size must be >= 1")
        if self.max_batch_size < 1:
            problems.append(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.num_actors is not None and self.num_actors < 1:
            problems.append(f"--num-actors must be >= 1, got {self.num_actors}")
        if self.images_per_shard < 1:
            problems.append(f"--images-per-shard must be >= 1, got {self.images_per_shard}")
        if not 0 <= self.audit_fraction <= 1:
            problems.append(f"--audit-fraction must lie in [0, 1], got {self.audit_fraction}")
        if self.max_shard_retries < 0:
            problems.append(f"--max-shard-retries must be >= 0, got {self.max_shard_retries}")
        if self.gpu_decode and self.jpeg_draft:
            problems.append("--gpu-decode and --jpeg-draft exclude each other (draft is a CPU decode option)")
        if self.gpu_decode and self.gpus_per_actor is not None and self.gpus_per_actor <= 0:
            problems.append("--gpu-decode needs GPU actors (--gpus-per-actor > 0)")
        if self.check_data not in CHECK_MODES:
            problems.append(f"--check-data must be one of {', '.join(CHECK_MODES)}, got {self.check_data!r}")
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
    variants: tuple[str, ...]     # as asked: "hflip", "vflip", "crop:K" (sinks.schema.parse_variants)
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
    seed: int = 0                 # of the crop:K variants' boxes
    # How attempts run and commit (none of it decides the tokens):
    max_shard_retries: int = 3        # an attempt knows whether it is the last (transient failures)
    run_id: str = ""                  # names this run's temp and attempt files (clean-up of its own)
    allow_unconditional_commit: bool = False
    # Storage options as they travel through Ray: `storage_options` is emptied and the options
    # ride in Ray's object store (pipeline/secrets.py); `with_live_options` restores them.
    storage_secret: SecretOptions | None = None
    # The input's layout (sources/inputs.py): class names (folder classes or a ClassLabel's
    # names; they decide the labels, so they are part of the token settings) and, for Parquet
    # inputs, where images, labels and keys are.
    class_names: tuple[str, ...] | None = None
    parquet_columns: dict[str, Any] | None = None
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD
    audit_fraction: float = 0.0

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
            **({"seed": self.seed} if self.crops else {}),
            **({"class_names": list(self.class_names)} if self.class_names else {}),
            **({"parquet_columns": self.parquet_columns} if self.parquet_columns else {}),
        }

    @property
    def flips(self) -> tuple[str, ...]:
        return parse_variants(self.variants)[0]

    @property
    def crops(self) -> int:
        """K of --variants crop:K (0: none)."""
        return parse_variants(self.variants)[1]

    def compute_fingerprint(self, tokenizer_fingerprint: str) -> str:
        blob = json.dumps({"tokenizer": tokenizer_fingerprint, "settings": self.token_settings()},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def replace(self, **changes: Any) -> "JobSpec":
        return dataclasses.replace(self, **changes)

    def for_ray(self) -> "JobSpec":
        """This spec as it may be handed to Ray: no storage option in clear."""
        return self.replace(storage_options={}, storage_secret=SecretOptions.put(self.storage_options))

    def with_live_options(self) -> "JobSpec":
        """In an actor: the spec with its storage options back from the object store."""
        if self.storage_secret is None:
            return self
        return self.replace(storage_options=self.storage_secret.resolve(), storage_secret=None)
