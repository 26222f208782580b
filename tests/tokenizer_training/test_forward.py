"""Training forwards of the three families against their inference tokenizers, the losses and the
GQ constraint's lambda updates (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.tokenizer_training.data import random_crop
from pipeline.tokenizer_training.families import build_family
from pipeline.tokenizer_training.gq_forward import GQRegularizer
from pipeline.tokenizer_training.losses import PatchDiscriminator, hinge_d_loss, pixel_loss, psnr, ssim
from pipeline.tokenizer_training.var_forward import ForwardOutput, residual_quantize_train, restart_dead_codes

VAR_TINY = {"ch": 32, "vocab_size": 64, "z_channels": 8, "v_patch_nums": [1, 2, 4]}
GQ_TINY = {"encoder_decoder_kwargs": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                      "resolution": 32, "z_channels": 8},
           "regulariser_kwargs": {"n_samples": 256, "group": 4}}
GSQ_TINY = {"hidden_channels": 32, "channel_multipliers": [1, 2], "encoder_layer_configs": [1, 1, 1],
            "decoder_layer_configs": [1, 1, 1], "embedding_dim": 8,
            "quantizer_config": {"quantize_type": "gvq", "embed_dim": 8, "num_embed": 32, "use_l2_norm": True,
                                 "num_group": 2}}


def images(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_pixel_losses_ssim_psnr():
    x = images()
    y = x + 0.1
    assert pixel_loss("l1", y, x).item() == pytest.approx(0.1, abs=1e-5)
    assert pixel_loss("l2", y, x).item() == pytest.approx(0.01, abs=1e-5)
    assert pixel_loss("charbonnier", y, x).item() == pytest.approx(math.sqrt(0.01 + 1e-6), abs=1e-5)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, torch.zeros_like(x)).item() < 0.2
    # an error of 0.1 in [-1, 1] is 0.05 in [0, 1]: PSNR = -10 log10(0.0025) = 26.02 dB
    assert psnr(y, x).mean().item() == pytest.approx(26.02, abs=0.01)
    with pytest.raises(ValueError, match="unknown pixel loss"):
        pixel_loss("l3", x, x)


def test_discriminator_hinge():
    d = PatchDiscriminator(channels=32, layers=2)
    logits = d(images())
    assert logits.ndim == 4 and logits.shape[1] == 1
    assert hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0


def test_var_training_forward_matches_the_tokenizer():
    fam = build_family("var-vqvae", VAR_TINY)
    x = images()
    out = fam.forward(fam.model, x)
    tokens = fam.tokenizer.encode(x)
    for a, b in zip(out.indices, tokens.grids):  # same codes as inference
        assert torch.equal(a, b)
    f = fam.model.encode_latent(x)
    st, loss, _, _ = residual_quantize_train(fam.model.quantize, f, beta=0.25)
    inference_fhat = fam.model.quantize(f.detach()).quantized
    torch.testing.assert_close(st, inference_fhat, atol=1e-5, rtol=1e-5)  # straight-through value
    fam.model.zero_grad()
    ((out.recon - x).abs().mean() + out.quant_loss).backward()
    assert fam.model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert fam.model.quantize.embedding.weight.grad.abs().sum() > 0
    assert fam.model.quantize.quant_resi.qresi_ls[0].weight.grad is not None


def test_dead_code_restart_replaces_only_unused_codes():
    emb = torch.zeros(4, 3)
    counts = torch.tensor([3, 0, 1, 0])
    rows = torch.ones(10, 3)
    assert restart_dead_codes(emb, counts, rows) == 2
    assert emb[1].eq(1).all() and emb[3].eq(1).all() and emb[0].eq(0).all()


def test_gsq_training_forward_decodes_raw_rows_like_inference():
    fam = build_family("gsq", GSQ_TINY)
    x = images(size=32)
    out = fam.forward(fam.model, x)
    tokens = fam.tokenizer.encode(x)
    assert torch.equal(out.indices[0], tokens.grids[0])
    assert out.indices[0].shape == (2, 16, 16, 2)
    with torch.no_grad():
        st = fam.model.quantizers.lookup(out.indices[0])
        ref = fam.tokenizer.decode(tokens)
        torch.testing.assert_close(fam.model.decoder(st), ref, atol=1e-5, rtol=1e-5)
    out.quant_loss.backward()
    assert fam.model.quantizers.codebook.weight.grad.abs().sum() > 0


def test_gq_constraint_bits_and_lambda_updates():
    fam = build_family("gq", GQ_TINY)
    reg = GQRegularizer(fam.tokenizer, tolerance=0.5)
    assert reg.target == 8.0  # int(log2 256)
    mu = torch.zeros(1, 8, 2, 2)
    logvar = torch.zeros(1, 8, 2, 2)
    mu[0, 0, 0, 0] = 2.0  # channel 0 belongs to sub-vector 0 (strided layout)
    bits = reg.bits_per_subvector(mu, logvar)
    assert bits.shape == (1, 2 * 2 * 2)
    assert bits[0, 0].item() == pytest.approx(1.4426950408889634 * 0.5 * 4.0, rel=1e-6)
    assert bits[0, 1:].abs().max().item() == 0.0
    # all sub-vectors far above the band: lam and lam_max go up, lam_min (min above band) goes up to its cap
    reg.last_bits = torch.full((1, 8), 20.0)
    logs = reg.update(ForwardOutput(recon=mu, quant_loss=mu.sum()))
    assert logs["lam"] == pytest.approx(1.01) and logs["lam_max"] == pytest.approx(1.01)
    assert logs["lam_min"] == 1.0
    reg.last_bits = torch.full((1, 8), 1.0)  # far below: lam down, lam_max down to its floor, lam_min down
    logs = reg.update(ForwardOutput(recon=mu, quant_loss=mu.sum()))
    assert logs["lam"] == pytest.approx(1.0) and logs["lam_max"] == pytest.approx(1.0)
    assert logs["lam_min"] == pytest.approx(1 / 1.01)
    # above the band the KL is weighted lam_max; inside the band by 1
    reg.lam_max = 3.0
    loss = reg.loss(torch.tensor([[20.0, 8.0]]))
    assert loss.item() == pytest.approx(reg.lam * (3.0 * 20.0 + 8.0))
    out = fam.forward(fam.model, images(size=32))
    assert out.recon.shape == (2, 3, 32, 32) and out.quant_loss.item() > 0


def test_random_crop_sizes_and_small_images():
    rng = np.random.default_rng(0)
    big = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    small = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    for image in (big, small):
        for _ in range(5):
            assert random_crop(image, 64, rng).shape == (64, 64, 3)


def test_trainer_steps_with_gan_and_ssim_and_restores_from_its_checkpoint(tmp_path):
    from pipeline.tokenizer_training.config import TokenizerTrainConfig
    from pipeline.tokenizer_training.steps import Trainer, load_run_checkpoint

    cfg = TokenizerTrainConfig(train_shards="unused", model_config=VAR_TINY, batch_size=2, max_steps=2, log_every=1,
                               ssim_weight=0.1, disc_weight=0.1, disc_start=1, warmup_steps=1, restart_dead_codes=1,
                               quant_start=1)
    trainer = Trainer(cfg, build_family("var-vqvae", VAR_TINY), torch.device("cpu"))
    initial_codebook = trainer.raw.quantize.embedding.weight.detach().clone()
    rows = [trainer.train_step(images(size=32, seed=0))]
    assert rows[0]["quant"] == 0.0  # autoencoder warm-up step: no quantisation
    assert torch.equal(trainer.raw.quantize.embedding.weight, initial_codebook)
    rows.append(trainer.train_step(images(size=32, seed=1)))
    assert rows[1]["quant"] > 0  # quantisation on, codebook initialised from latents
    assert not torch.allclose(trainer.raw.quantize.embedding.weight, initial_codebook)
    assert "g_loss" not in rows[0] and "g_loss" in rows[1] and "d_loss" in rows[1]  # GAN after its warm-up
    assert "ssim" in rows[0] and all(math.isfinite(r["loss"]) for r in rows)
    trainer.save(str(tmp_path))
    restored = load_run_checkpoint(str(tmp_path))
    assert restored.step == 2 and restored.disc is not None and restored.disc_optimizer is not None
    again = Trainer(cfg, build_family("var-vqvae", VAR_TINY), torch.device("cpu"), restored=restored)
    assert again.step == 2
    for k, v in trainer.raw.state_dict().items():
        assert torch.equal(v, again.raw.state_dict()[k]), k


def test_perceptual_loss_uses_only_user_supplied_vgg_weights(tmp_path):
    from safetensors.torch import save_file

    from pipeline.tokenizer_training.losses import VGGPerceptual
    from pipeline.tokenizers.checkpoints import CheckpointError

    with pytest.raises(CheckpointError):
        VGGPerceptual(str(tmp_path / "missing.safetensors"))
    torch.manual_seed(0)
    layers, c = [], 3
    for i, v in enumerate((64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)):
        if v != "M":
            layers.append((c, v))
            c = v
    # torchvision's vgg16 `features.N` indices of the 13 convs
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    sd = {}
    for idx, (ci, co) in zip(conv_idx, layers):
        sd[f"features.{idx}.weight"] = torch.randn(co, ci, 3, 3) * 0.05
        sd[f"features.{idx}.bias"] = torch.zeros(co)
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # other VGG tensors are ignored
    path = tmp_path / "vgg16.safetensors"
    save_file(sd, str(path))
    loss = VGGPerceptual(str(path))
    x = images(size=32)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, -x).item() > 0


def _bit_stats_worker(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    from pipeline.tokenizer_training.gq_forward import global_bit_stats

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        bits = torch.tensor([[1.0, 3.0]]) if rank == 0 else torch.tensor([[10.0, 2.0, 6.0, 7.0]])
        results[rank] = global_bit_stats(bits)
    finally:
        dist.destroy_process_group()


def test_gq_lambda_statistics_are_global_under_ddp(tmp_path):
    """Two gloo ranks with different batches take the same lam steps: the KL statistics that drive
    them are reduced over every worker (mean over all sub-vectors, max and min over all)."""
    import torch.multiprocessing as mp

    from pipeline.tokenizer_training.gq_forward import global_bit_stats

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_bit_stats_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        got = dict(results)
    assert got[0] == got[1] == pytest.approx((29.0 / 6, 10.0, 1.0))
    assert global_bit_stats(torch.tensor([[1.0, 3.0]])) == pytest.approx((2.0, 3.0, 1.0))  # one process
