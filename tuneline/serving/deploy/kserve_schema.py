"""Structural JSON schema (draft 2020-12) for the InferenceService fields tuneline emits.

It mirrors the serving.kserve.io/v1beta1 CRD for those fields and closes every object we write
(``additionalProperties: false``), so a misspelt key fails here rather than being pruned silently by the
API server. Fields we never emit are simply not allowed; extend the schema when the writer grows.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_QUANTITY = {
    "anyOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"},
        {"type": "integer", "minimum": 0},
    ]
}
_RESOURCE_LIST = {
    "type": "object",
    "additionalProperties": _QUANTITY,
    "propertyNames": {"pattern": r"^([a-z0-9.-]+/)?[a-z0-9.-]+$"},
}

_SECCOMP = {"type": "object", "additionalProperties": False, "required": ["type"],
            "properties": {"type": {"enum": ["RuntimeDefault", "Localhost", "Unconfined"]}, "localhostProfile": _STR}}
POD_SECURITY_CONTEXT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "runAsNonRoot": {"type": "boolean"},
        "runAsUser": {"type": "integer", "minimum": 0},
        "runAsGroup": {"type": "integer", "minimum": 0},
        "fsGroup": {"type": "integer", "minimum": 0},
        "seccompProfile": _SECCOMP,
    },
}
CONTAINER_SECURITY_CONTEXT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "allowPrivilegeEscalation": {"type": "boolean"},
        "readOnlyRootFilesystem": {"type": "boolean"},
        "runAsNonRoot": {"type": "boolean"},
        "runAsUser": {"type": "integer", "minimum": 0},
        "capabilities": {"type": "object", "additionalProperties": False, "properties": {
            "drop": {"type": "array", "items": _STR}, "add": {"type": "array", "items": _STR}}},
        "seccompProfile": _SECCOMP,
    },
}

TOLERATION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "key": _STR,
        "operator": {"enum": ["Equal", "Exists"]},
        "value": _STR,
        "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": {"type": "integer"},
    },
}

MODEL_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["modelFormat", "storageUri"],
    "properties": {
        "modelFormat": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"name": _STR, "version": _STR},
        },
        "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
        "runtime": _STR,
        "storageUri": {"type": "string", "pattern": r"^(pvc|gs|s3|https?|hf|oci)://.+"},
        "args": {"type": "array", "items": _STR},
        "env": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": _STR, "value": _STR},
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"requests": _RESOURCE_LIST, "limits": _RESOURCE_LIST},
        },
        "securityContext": CONTAINER_SECURITY_CONTEXT,
    },
}

PREDICTOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model"],
    "properties": {
        "model": MODEL_SPEC,
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "scaleTarget": {"type": "integer", "minimum": 1},
        "containerConcurrency": {"type": "integer", "minimum": 0},
        "timeout": {"type": "integer", "minimum": 1},
        "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
        "serviceAccountName": _DNS_LABEL,
        "priorityClassName": _DNS_LABEL,
        "securityContext": POD_SECURITY_CONTEXT,
        "nodeSelector": _STR_MAP,
        "tolerations": {"type": "array", "items": TOLERATION},
    },
}

INFERENCE_SERVICE: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "serving.kserve.io/v1beta1 InferenceService (fields emitted by tuneline)",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": _DNS_LABEL,
                "namespace": _DNS_LABEL,
                "labels": _STR_MAP,
                "annotations": _STR_MAP,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["predictor"],
            "properties": {"predictor": PREDICTOR},
        },
    },
}

# (apiVersion, kind) -> schema, for the validator.
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
}
