"""The job's default encoder path gives the reference's tokens, and the speed options that do not
(channels-last, compile) stay off by default (measured: benchmarks/RESULTS.md section 2b).

The default path's guarantee is checked here against benchmarks/reference_vqvae.py, VAR's forward
in the official op order (itself checked against the official fixture tokens in
tests/job/test_job_conformance.py), on the same weights and real photos: same kernels, same
rounding, so the tokens must be identical, not merely close."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks.reference_vqvae import img_to_idx
from pipeline.runner.actor import apply_speed_options
from pipeline.runner.config import TokenizeConfig
from pipeline.tokenizer_training.photos import HELD_OUT_PHOTOS, TRAIN_PHOTOS, load_photo
from pipeline.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def photos():
    found = [p for p in (load_photo(*ref) for ref in TRAIN_PHOTOS[:6] + HELD_OUT_PHOTOS) if p is not None]
    assert len(found) >= 6  # scikit-image and matplotlib are dependencies: these must exist
    return found


def test_speed_options_that_change_kernels_are_off_by_default():
    cfg = TokenizeConfig()
    assert cfg.channels_last is False and cfg.compile is False


def test_default_path_leaves_the_model_as_built():
    tok = load_tokenizer("var-vqvae", config={"ch": 32, "vocab_size": 256, "z_channels": 32})
    apply_speed_options(tok, SimpleNamespace(channels_last=False, compile=False))
    convs = [p for p in tok.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous() for p in convs)
    apply_speed_options(tok, SimpleNamespace(channels_last=True, compile=False))  # what the flag does
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs if p.shape[-1] > 1)


@pytest.mark.parametrize("weights", ["fixture", "trained-default"])
def test_default_encoder_gives_the_reference_op_order_tokens_on_photos(weights, photos, fixtures_dir):
    if weights == "fixture":
        var_dir = fixtures_dir / "var"
        config = json.loads((var_dir / "vqvae_small_config.json").read_text())["constructor"]
        tok = load_tokenizer("var-vqvae", checkpoint=str(var_dir / "vqvae_small.safetensors"), config=config)
    else:
        tok = load_tokenizer("default")  # trained weights: realistic codebook margins
    x = tok.preprocess(photos)
    ours = tok.encode(x).flat()
    reference = torch.cat(img_to_idx(tok.model, x, tok.patch_nums), dim=1)
    assert ours.shape == reference.shape
    assert torch.equal(ours, reference), f"{int((ours != reference).sum())} of {ours.numel()} codes differ"
