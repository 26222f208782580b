"""KubeRay manifests: valid against the KubeRay v1 fields and Kubernetes' pod schema, and saying
what matters (GPU workers, autoscaling, the job entry points with flags the jobs accept)."""

from __future__ import annotations

import argparse
import copy
import importlib
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from pipeline.config import config_from_args
from kuberay_schema import kuberay_errors, pod_template_errors

KUBERAY = Path(__file__).resolve().parents[2] / "infra" / "kuberay"
FILES = ["raycluster.yaml", "rayjob-tokenize.yaml", "rayjob-train.yaml"]


def load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    assert len(docs) == 1, f"{name}: expected one manifest"
    return docs[0]


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name", FILES)
def test_manifest_matches_the_kuberay_fields(name):
    assert kuberay_errors(load(name)) == []


@pytest.mark.parametrize("name", FILES)
def test_pod_templates_match_the_kubernetes_schema(name):
    assert pod_template_errors(load(name)) == []


def test_the_validators_catch_mistakes():
    bad = copy.deepcopy(load("raycluster.yaml"))
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4          # misspelt KubeRay field
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert len(kuberay_errors(bad)) == 2
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    assert any("imagee" in e for e in pod_template_errors(bad))


@pytest.mark.parametrize("name", FILES)
def test_cluster_has_an_autoscaled_gpu_group_and_a_cpu_head(name):
    spec = cluster_spec(load(name))
    assert spec["rayVersion"] == ray.__version__, "image Ray must match the clients' Ray"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no tokenizer/training work on the head
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 2
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == "1"
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert "/dev/shm" in mounts, "the object store needs a real /dev/shm"
    for c in containers(spec):
        assert {"name": "RAY_AUTH_MODE", "value": "disabled"} in c["env"], c["name"]
        assert c["image"] == containers(cluster_spec(load("raycluster.yaml")))[0]["image"]


@pytest.mark.parametrize("name, module, config_class", [
    ("rayjob-tokenize.yaml", "jobs.tokenize", "pipeline.runner.config:TokenizeConfig"),
    ("rayjob-train.yaml", "jobs.train_var", "pipeline.var.train_config:TrainConfig")])
def test_rayjob_runs_our_entry_point_with_flags_it_accepts(name, module, config_class):
    spec = load(name)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] == "K8sJobMode"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and "env_vars" in runtime_env
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", module]
    parser = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module(module).add_arguments(parser)
    module_name, class_name = config_class.split(":")
    cfg = config_from_args(getattr(importlib.import_module(module_name), class_name),
                           parser.parse_args(argv[3:]))  # SystemExit on an unknown flag
    if hasattr(cfg, "resolved"):  # the training config fills the depth's recipe defaults first
        cfg = cfg.resolved()
    cfg.validate()
    if module == "jobs.tokenize":
        assert cfg.input[0].startswith("s3://") and cfg.output.startswith("s3://")
    else:  # one Ray Train worker per GPU worker pod at full scale
        assert cfg.use_gpu and cfg.num_workers == spec["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]


def test_the_rayjobs_share_the_long_lived_cluster_spec():
    base = load("raycluster.yaml")["spec"]
    for name in FILES[1:]:
        assert load(name)["spec"]["rayClusterSpec"] == base, f"{name} drifted from raycluster.yaml"
