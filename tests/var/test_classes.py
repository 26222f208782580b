"""Labels end to end: a class-folder corpus -> tokens with class names -> training takes the class
count from the data (not VAR's hard-coded 1000) -> the model keeps the names -> sampling by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.var.loading import load_trained, resolve_classes
from pipeline.var.train import fit
from pipeline.var.train_config import TrainConfig
from tests.sources.test_inputs import imagenet_tree

ROOT = Path(__file__).resolve().parents[2]


def test_resolve_classes_by_index_or_name():
    names = ["n01440764", "tabby", "zebra"]
    assert resolve_classes(["2", "tabby", 0], 3, names) == [2, 1, 0]
    assert resolve_classes(["3"], 3, names) == [3]  # the unconditional class
    with pytest.raises(ValueError, match="neither a class index nor a class name.*tabby"):
        resolve_classes(["tiger"], 3, names)
    with pytest.raises(ValueError, match="outside 0..2"):
        resolve_classes(["7"], 3, names)
    with pytest.raises(ValueError, match="records no class names"):
        resolve_classes(["tabby"], 3, None)


def test_training_takes_the_classes_from_the_data(fresh_ray, small_tokenizer_spec, tmp_path, capfd):
    from pipeline.runner.config import TokenizeConfig
    from pipeline.runner.job import run_tokenize

    tree = imagenet_tree(tmp_path / "train")
    config_file = tmp_path / "tokenizer.json"
    config_file.write_text(json.dumps(small_tokenizer_spec["config"]))
    tokens = tmp_path / "tokens"
    assert run_tokenize(TokenizeConfig(input=[str(tree)], output=str(tokens), tokenizer="var-vqvae",
                                       checkpoint=small_tokenizer_spec["checkpoint"], tokenizer_config=str(config_file),
                                       image_size=64, num_actors=1, cpus_per_actor=0.5, batch_size=8,
                                       progress=False)) == 0
    cfg = TrainConfig(tokens=[str(tokens)], tokenizer_checkpoint=small_tokenizer_spec["checkpoint"], depth=2,
                      var_config={"embed_dim": 64, "num_heads": 2}, batch_size=2, lr=1e-3, num_workers=1,
                      cpus_per_worker=0.5, storage_path=str(tmp_path / "runs"), name="classes", ckpt_every=2,
                      log_every=1, max_steps=2)
    result = fit(cfg)
    assert result.final_step == 2
    assert "classes: 4 classes named by the token files" in capfd.readouterr().out
    model = load_trained(result.run_dir)
    assert model.num_classes == 4
    assert model.class_names == ["n00000000_empty", "n01440764", "n01443537", "n02102040"]
    out = tmp_path / "s.png"
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "sample", "--checkpoint", result.run_dir,
                          "--classes", "n01443537,n02102040", "--per-class", "1", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0 and "2 classes x 1" in run.stdout, run.stdout + run.stderr
    assert out.exists()
    wrong = subprocess.run([sys.executable, "-m", "pipeline.cli", "sample", "--checkpoint", result.run_dir,
                            "--classes", "tiger", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                           timeout=600)
    assert wrong.returncode == 2 and "tiger" in wrong.stderr
