"""The part of the KubeRay `ray.io/v1` API our manifests use, as a JSON schema, with the pod
templates checked against Kubernetes' own PodTemplateSpec schema.

No KubeRay CRD ships in any package we can install offline, so the field names and types here are
transcribed from KubeRay's API reference (`RayClusterSpec`, `HeadGroupSpec`, `WorkerGroupSpec`,
`AutoscalerOptions`, `RayJobSpec`). Unknown fields are errors: `kubectl apply` validates strictly
by default and would refuse them too. The pod templates (the bulk of the real CRD) are validated
against the strict Kubernetes schema shipped by `kubernetes-validate`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jsonschema

KUBERNETES_VERSION = "1.30.0"

_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_STR = {"type": "string"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
_ANY_OBJECT = {"type": "object"}


def _obj(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


AUTOSCALER_OPTIONS = _obj({
    "resources": _ANY_OBJECT, "image": _STR, "imagePullPolicy": _STR, "securityContext": _ANY_OBJECT,
    "idleTimeoutSeconds": _INT, "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
    "env": {"type": "array"}, "envFrom": {"type": "array"}, "volumeMounts": {"type": "array"},
    "version": {"enum": ["v1", "v2"]},
})
HEAD_GROUP = _obj({
    "template": _POD_TEMPLATE, "headService": _ANY_OBJECT, "enableIngress": _BOOL,
    "rayStartParams": _STR_MAP, "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
}, required=("template",))
WORKER_GROUP = _obj({
    "suspend": _BOOL, "groupName": _STR, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
    "idleTimeoutSeconds": _INT, "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE,
    "scaleStrategy": _obj({"workersToDelete": {"type": "array", "items": _STR}}), "numOfHosts": _INT,
}, required=("groupName", "template"))
RAY_CLUSTER_SPEC = _obj({
    "suspend": _BOOL, "managedBy": _STR, "autoscalerOptions": AUTOSCALER_OPTIONS,
    "headServiceAnnotations": _STR_MAP, "enableInTreeAutoscaling": _BOOL, "gcsFaultToleranceOptions": _ANY_OBJECT,
    "headGroupSpec": HEAD_GROUP, "rayVersion": _STR, "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
}, required=("headGroupSpec",))
RAY_JOB_SPEC = _obj({
    "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": _INT,
    "rayClusterSpec": RAY_CLUSTER_SPEC, "submitterPodTemplate": _POD_TEMPLATE, "metadata": _STR_MAP,
    "clusterSelector": _STR_MAP, "submitterConfig": _obj({"backoffLimit": _INT}), "managedBy": _STR,
    "deletionPolicy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]},
    "entrypoint": _STR, "runtimeEnvYAML": _STR, "jobId": _STR,
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
    "entrypointResources": _STR, "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0}, "shutdownAfterJobFinishes": _BOOL,
    "suspend": _BOOL,
})
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _STR}}


def _resource(kind: str, spec: dict) -> dict:
    return _obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind}, "metadata": _METADATA,
                 "spec": spec}, required=("apiVersion", "kind", "metadata", "spec"))


SCHEMAS = {"RayCluster": _resource("RayCluster", RAY_CLUSTER_SPEC), "RayJob": _resource("RayJob", RAY_JOB_SPEC)}


@lru_cache(maxsize=1)
def _pod_template_validator() -> jsonschema.Validator:
    from referencing import Registry, Resource

    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    schema = json.loads((root / "podtemplatespec-v1.json").read_text())
    definitions = json.loads((root / "_definitions.json").read_text())
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _pod_templates(node, path=()):
    """(path, template) of every pod template in a manifest (the `template` fields of the groups)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("template", "submitterPodTemplate") and isinstance(value, dict) and "spec" in value:
                yield path + (key,), value
            else:
                yield from _pod_templates(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _pod_templates(value, path + (i,))


def _format(errors, prefix=()) -> list[str]:
    return [f"{'.'.join(map(str, prefix + tuple(e.absolute_path)))}: {e.message}" for e in errors]


def kuberay_errors(manifest: dict) -> list[str]:
    """Problems of a RayCluster/RayJob manifest against the KubeRay fields, as 'path: message'."""
    schema = SCHEMAS.get(manifest.get("kind"))
    if schema is None:
        return [f"kind: {manifest.get('kind')!r} is not one of {sorted(SCHEMAS)}"]
    return _format(jsonschema.Draft202012Validator(schema).iter_errors(manifest))


def pod_template_errors(manifest: dict) -> list[str]:
    """Problems of every pod template in the manifest against Kubernetes' strict schema
    (needs the `kubernetes-validate` package)."""
    validator = _pod_template_validator()
    return [line for path, template in _pod_templates(manifest)
            for line in _format(validator.iter_errors(template), path)]
