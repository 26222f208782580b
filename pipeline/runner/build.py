"""Config -> JobSpec and JobSpec -> tokenizer: the same code on the driver and in every actor, so
all of them build a bit-identical tokenizer (checked through its fingerprint).

Every registered family goes through the same job: discrete tokenizers store integer codes,
continuous ones (ViTok) their latents cast to --latent-dtype (see pipeline/sinks/schema.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import numpy as np

from pipeline import __version__
from pipeline.runner.batch_probe import probe_input_size
from pipeline.sinks.schema import SCHEMA_VERSION, latent_dtype, variant_names
from pipeline.runner.config import JobSpec, TokenizeConfig, read_tokenizer_config
from pipeline.runner.encode_batch import encode_group
from pipeline.sources.inputs import InputPlan
from pipeline.tokenizers.base import Tokenizer, load_tokenizer
from pipeline.images import PreprocessConfig


def build_tokenizer(spec: JobSpec, device: str = "cpu") -> Tokenizer:
    if spec.tokenizer_module:
        importlib.import_module(spec.tokenizer_module)  # a plugin that registers extra tokenizers
    tok = load_tokenizer(spec.tokenizer, spec.checkpoint, spec.tokenizer_config,
                         precision=spec.precision, device=device)
    tok.preprocess_config = PreprocessConfig(**spec.preprocess)
    return tok


def plan_job(cfg: TokenizeConfig, inputs: InputPlan | None = None) -> tuple[JobSpec, Tokenizer]:
    """Resolve every default once (on the driver) and compute the job's fingerprint. `inputs`: the
    input's layout (its class names and Parquet columns decide labels, so they join the settings)."""
    cfg.validate()
    spec = JobSpec(
        tokenizer=cfg.tokenizer, checkpoint=cfg.checkpoint,
        tokenizer_config=read_tokenizer_config(cfg.tokenizer_config),
        tokenizer_module=cfg.tokenizer_module, preprocess={}, precision=cfg.precision,
        patch_nums=(), tile_size=cfg.tile_size, overlap=cfg.overlap,
        variants=tuple(cfg.extra_variants()), seed=int(cfg.seed), max_image_pixels=int(cfg.max_image_pixels),
        max_member_bytes=int(cfg.max_member_bytes),
        batch_size=1 if cfg.auto_batch else int(cfg.batch_size),
        decode_threads=int(cfg.decode_threads or max(2, int(cfg.cpus_per_actor))),
        row_group_rows=int(cfg.row_group_rows), output=cfg.output,
        storage_options=dict(cfg.storage_options or {}),
        jpeg_draft=bool(cfg.jpeg_draft), gpu_decode=bool(cfg.gpu_decode), channels_last=bool(cfg.channels_last), compile=bool(cfg.compile),
        auto_batch=cfg.auto_batch, max_batch_size=int(cfg.max_batch_size),
        max_shard_retries=int(cfg.max_shard_retries), allow_unconditional_commit=bool(cfg.allow_unconditional_commit),
        class_names=tuple(inputs.class_names) if inputs is not None and inputs.class_names else None,
        parquet_columns=inputs.columns.to_dict() if inputs is not None and inputs.columns else None,
        audit_fraction=float(cfg.audit_fraction), images_per_shard=int(cfg.images_per_shard),
    )
    if spec.checkpoint and "://" not in spec.checkpoint and not os.path.exists(spec.checkpoint):
        raise ValueError(f"--checkpoint {spec.checkpoint} does not exist")
    if spec.tokenizer_module:
        importlib.import_module(spec.tokenizer_module)
    tok = load_tokenizer(spec.tokenizer, spec.checkpoint, spec.tokenizer_config, precision=spec.precision)
    latents = latent_settings(cfg, tok)
    pre = dataclasses.asdict(tok.preprocess_config)
    pre["mode"] = cfg.resolved_policy()
    if cfg.image_size:
        pre["size"] = int(cfg.image_size)
    if cfg.max_side:
        pre["max_side"] = int(cfg.max_side)
    PreprocessConfig(**pre)  # validates
    patch_nums = tuple(int(p) for p in (cfg.patch_nums or tok.patch_nums))
    if cfg.scale_superset:
        # FlexVAR-style: every scale 1..N so any schedule can be sliced at training time.
        patch_nums = tuple(range(1, max(patch_nums) + 1))
    spec = spec.replace(preprocess=pre, patch_nums=patch_nums, vocab_size=int(tok.vocab_size))
    tok.preprocess_config = PreprocessConfig(**pre)
    if spec.crops and type(tok).preprocess is not Tokenizer.preprocess:
        raise ValueError(f"--variants crop:K crops with the standard image policy, and {tok.name} "
                         f"preprocesses images its own way")
    if spec.gpu_decode and type(tok).preprocess is not Tokenizer.preprocess:
        raise ValueError(f"--gpu-decode applies the standard image policy on the GPU, and {tok.name} "
                         f"preprocesses images its own way; decode on the CPU for it")
    if spec.auto_batch:
        probe_input_size(tok.preprocess_config)  # native without --max-side: refused here
    tok_fp = tok.fingerprint()
    # The latent dtype decides the stored bytes, so it is part of the job's identity (resume guard);
    # discrete jobs keep the fingerprint they always had.
    fingerprint = spec.compute_fingerprint(f"{tok_fp}+latents:{latents['latent_dtype']}" if latents else tok_fp)
    spec = spec.replace(tokenizer_fingerprint=tok_fp, fingerprint=fingerprint)
    job_config = {**spec.token_settings(), **({"latent_dtype": latents["latent_dtype"]} if latents else {})}
    spec.metadata = {
        "schema_version": SCHEMA_VERSION,
        "tokenizer": spec.tokenizer,
        # Two fingerprints, each named: the tokenizer's (weights + config + preprocessing +
        # precision) and the job's (the tokenizer's + every setting that decides the tokens).
        # `fingerprint` is the tokenizer's under its first name, which readers of older files use.
        "fingerprint": tok_fp,
        "tokenizer_fingerprint": tok_fp,
        "job_fingerprint": fingerprint,
        "patch_nums": list(patch_nums),
        "scale_grids": scale_grids(tok, spec, latents.get("latent_dtype", "float16")),
        "scale_superset": bool(cfg.scale_superset),
        "vocab_size": int(tok.vocab_size),
        "groups": int(tok.groups),
        "preprocess": pre,
        "precision": spec.precision,
        "version": __version__,
        "job_config": job_config,
        "tokenizer_config": tok.describe()["config"],
        "variants": [name for _, _, name in variant_names(spec.flips, spec.crops)] if spec.variants else [],
        **({"class_names": list(spec.class_names)} if spec.class_names else {}),
        **latents,
    }
    return spec, tok


# What `scale_grids` says when each image keeps its own size and so its own grids.
GRIDS_PER_ROW = "per row: each row's scale_shapes (native image sizes give each image its own grids)"


def scale_grids(tok: Tokenizer, spec: JobSpec, latent_dtype: str) -> list[list[int]] | str:
    """The [h, w] grid of every stored scale, smallest first, when the image policy gives every
    image the same canvas (center-crop, resize): what a row's scale_shapes will hold. The schedule
    alone does not say it: at --image-size 128, patch_nums 1,2,3,4 of var-vqvae are grids 2,4,6,8.
    Found by encoding one blank image of that canvas the way the actors will; `GRIDS_PER_ROW` for
    the native policy."""
    pre = tok.preprocess_config
    if pre.mode == "native":
        return GRIDS_PER_ROW
    blank = np.full((pre.size, pre.size, 3), 128, dtype=np.uint8)
    (row,) = encode_group(tok, tok.preprocess([blank]), spec.patch_nums, spec.tile_size, spec.overlap,
                          latent_dtype)
    shapes = [int(v) for v in row.scale_shapes]
    return [shapes[i:i + 2] for i in range(0, len(shapes), 2)]


def latent_settings(cfg: TokenizeConfig, tok: Tokenizer) -> dict[str, object]:
    """The metadata of a continuous tokenizer's latents ({} for discrete ones), with the checks
    that options make sense for the tokenizer at hand."""
    dtype = cfg.latent_dtype or "float16"
    latent_dtype(dtype)  # validates the name
    if not tok.continuous:
        if tok.vocab_size <= 0:
            raise ValueError(f"{tok.name} has no codebook (vocab_size {tok.vocab_size}) and is not marked "
                             f"continuous; the job cannot store its output")
        if dtype != "float16":
            raise ValueError(f"--latent-dtype applies to continuous tokenizers; {tok.name} gives integer codes")
        return {}
    if dtype == "float32" and cfg.precision != "fp32":
        raise ValueError("--latent-dtype float32 needs --precision fp32: bf16 latents are stored as float16")
    if cfg.scale_superset:
        raise ValueError(f"--scale-superset needs a multi-scale tokenizer; {tok.name} gives one latent grid")
    channels = getattr(tok, "latent_channels", None) or tok.config.get("channels_per_token")
    if not channels:
        raise ValueError(f"continuous tokenizer {tok.name} does not say how many channels its latents have "
                         f"(set a `latent_channels` attribute)")
    return {"continuous": True, "latent_channels": int(channels), "latent_dtype": dtype,
            "latent_patch": int(tok.downsample)}
