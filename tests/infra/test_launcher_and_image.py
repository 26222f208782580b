"""Ray cluster launcher configs (validated with Ray's own launcher schema and defaults), the
cluster Dockerfile, and the shell scripts' syntax."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ["aws.yaml", "gcp.yaml"]


def launcher(name: str) -> dict:
    return yaml.safe_load((ROOT / "infra" / "cluster" / name).read_text())


def prepared(config: dict) -> dict:
    """What `ray up` validates: the config merged with the provider's defaults."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_validation(name):
    full = prepared(launcher(name))
    assert full["head_node_type"] == "ray.head.cpu"


def test_launcher_validation_catches_mistakes():
    import jsonschema

    bad = launcher("aws.yaml")
    bad["available_node_types"]["ray.worker.gpu"]["max_worker"] = 8  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        prepared(bad)


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_has_gpu_workers_and_installs_scaletok(name):
    config = launcher(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    gpu = types["ray.worker.gpu"]
    assert gpu["resources"]["GPU"] == 1 and 0 <= gpu["min_workers"] < gpu["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"]
    assert "--env RAY_AUTH_MODE=disabled" in config["docker"]["run_options"]
    # The synced checkout is what setup installs, with torch pinned to the image's CUDA build.
    (target,) = [dst for dst, src in config["file_mounts"].items() if src == "."]
    install = " ".join(config["setup_commands"])
    assert f"-e {target}" in install and "-c /tmp/torch-pin.txt" in install
    starts = " ".join(config["head_start_ray_commands"])
    assert "--head" in starts and "--autoscaling-config=~/ray_bootstrap_config.yaml" in starts
    assert "--dashboard-host=127.0.0.1" in starts  # reached only through `ray dashboard`'s tunnel


def test_dockerfile_key_lines():
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base), base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray.__version__)}$", text, re.M), "image Ray != client Ray"
    assert '"ray[default,data,train]==${RAY_VERSION}"' in text
    for line in ("COPY pyproject.toml README.md ./", "COPY pipeline ./pipeline", "COPY jobs ./jobs"):
        assert line in text
    assert "pip install -c /tmp/torch-pin.txt -e ." in text  # never replaces the CUDA torch
    assert "ENV " in text and "RAY_AUTH_MODE=disabled" in text
    assert re.search(r"apt-get install .*\bwget\b", text)  # KubeRay's probes use it
    for path in ("pyproject.toml", "README.md", "pipeline", "jobs"):
        assert (ROOT / path).exists()


def test_image_name_is_the_same_everywhere():
    images = {launcher(n)["docker"]["image"] for n in LAUNCHER}
    for name in ("raycluster.yaml", "rayjob-tokenize.yaml", "rayjob-train.yaml"):
        images |= set(re.findall(r"image: (\S+)", (ROOT / "infra" / "kuberay" / name).read_text()))
    assert len(images) == 1, images


SCRIPTS = sorted((ROOT / "infra" / "local").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_syntax_and_hygiene(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if not script.name.startswith("_"):
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert script.stat().st_mode & 0o111, "not executable"
    assert not re.search(r"^\s*ray stop\b|\bpkill\b|\bkillall\b", text, re.M), "would stop other people's processes"
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-x", "-e", "SC1091", str(script)], check=True, cwd=script.parent)
