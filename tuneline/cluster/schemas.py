"""Structural JSON schemas for the custom resources in k8s/ (no CRD is installed where we validate).

Each schema covers the fields tuneline writes, closed with additionalProperties: false, so a misspelt field
fails here exactly as it would be pruned or rejected by the API server with the CRD installed. Field names
follow the upstream CRDs: prometheus-operator PrometheusRule and ServiceMonitor (also in Azure Monitor's
azmonitoring.coreos.com/v1 copy, which adds nothing but the group), Cilium's CiliumNetworkPolicy (the egress
fields tuneline uses), Secrets Store CSI SecretProviderClass,
Azure Service Operator v2 ManagedClustersAgentPool (containerservice.azure.com/v1api20240901), and KServe's
ServingRuntime (serving.kserve.io/v1alpha1: supportedModelFormats, protocolVersions, and its containers, which are
core Containers; the fields the runtime uses).
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": _STR, "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP},
}


def _object(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
    }


_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}

PROMETHEUS_RULE = _object("monitoring.coreos.com/v1", "PrometheusRule", {
    "type": "object",
    "additionalProperties": False,
    "properties": {"groups": {"type": "array", "items": {
        "type": "object",
        "required": ["name", "rules"],
        "additionalProperties": False,
        "properties": {
            "name": _STR, "interval": _DURATION, "limit": {"type": "integer"},
            "rules": {"type": "array", "items": {
                "type": "object",
                "required": ["expr"],
                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                "additionalProperties": False,
                "properties": {
                    "alert": _STR, "record": _STR, "expr": {"type": ["string", "integer"]},
                    "for": _DURATION, "keep_firing_for": _DURATION,
                    "labels": _STR_MAP, "annotations": _STR_MAP,
                },
            }},
        },
    }}},
})

_RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": _STR}, "separator": _STR, "targetLabel": _STR, "regex": _STR,
    "modulus": {"type": "integer"}, "replacement": _STR,
    "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                        "uppercase", "keepequal", "dropequal"]},
}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _STR_MAP,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "required": ["key", "operator"], "additionalProperties": False,
        "properties": {"key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": _STR}}}},
}}


def _service_monitor(api_version: str) -> dict[str, Any]:
    return _object(api_version, "ServiceMonitor", {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}},
            "jobLabel": _STR,
            "targetLabels": {"type": "array", "items": _STR},
            "podTargetLabels": {"type": "array", "items": _STR},
            "sampleLimit": {"type": "integer"},
            "labelLimit": {"type": "integer"},
            "labelNameLengthLimit": {"type": "integer"},
            "labelValueLengthLimit": {"type": "integer"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "port": _STR, "targetPort": {"type": ["string", "integer"]}, "path": _STR,
                    "scheme": {"enum": ["http", "https"]}, "interval": _DURATION, "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                    "relabelings": {"type": "array", "items": _RELABEL},
                    "metricRelabelings": {"type": "array", "items": _RELABEL},
                },
            }},
        },
    })


_CILIUM_PORTS = {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
    "ports": {"type": "array", "items": {"type": "object", "required": ["port"], "additionalProperties": False,
                                         "properties": {"port": _STR,
                                                        "protocol": {"enum": ["TCP", "UDP", "SCTP", "ANY"]}}}},
    "rules": {"type": "object", "additionalProperties": False, "properties": {
        "dns": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                           "properties": {"matchName": _STR, "matchPattern": _STR}}}}},
}}}
CILIUM_NETWORK_POLICY = _object("cilium.io/v2", "CiliumNetworkPolicy", {
    "type": "object",
    "required": ["endpointSelector"],
    "additionalProperties": False,
    "properties": {
        "endpointSelector": _SELECTOR,
        "egress": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
            "toEndpoints": {"type": "array", "items": _SELECTOR},
            "toFQDNs": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                   "properties": {"matchName": _STR, "matchPattern": _STR}}},
            "toCIDR": {"type": "array", "items": _STR},
            "toPorts": _CILIUM_PORTS,
        }}},
    },
})

SECRET_PROVIDER_CLASS = _object("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass", {
    "type": "object",
    "required": ["provider"],
    "additionalProperties": False,
    "properties": {
        "provider": {"enum": ["azure", "aws", "gcp", "vault"]},
        "parameters": _STR_MAP,
        "secretObjects": {"type": "array", "items": {
            "type": "object",
            "required": ["secretName", "type", "data"],
            "additionalProperties": False,
            "properties": {
                "secretName": _STR, "type": _STR, "labels": _STR_MAP, "annotations": _STR_MAP,
                "data": {"type": "array", "items": {
                    "type": "object", "required": ["objectName", "key"], "additionalProperties": False,
                    "properties": {"objectName": _STR, "key": _STR},
                }},
            },
        }},
    },
})

AGENT_POOL = _object("containerservice.azure.com/v1api20240901", "ManagedClustersAgentPool", {
    "type": "object",
    "required": ["owner", "vmSize", "mode"],
    "additionalProperties": False,
    "properties": {
        "owner": {"type": "object", "required": ["name"], "additionalProperties": False,
                  "properties": {"name": _STR, "armId": _STR}},
        "azureName": {"type": "string", "pattern": "^[a-z][a-z0-9]{0,11}$"},
        "count": {"type": "integer", "minimum": 0},
        "enableAutoScaling": {"type": "boolean"},
        "minCount": {"type": "integer", "minimum": 0},
        "maxCount": {"type": "integer", "minimum": 0},
        "maxPods": {"type": "integer", "minimum": 10},
        "mode": {"enum": ["System", "User"]},
        "vmSize": _STR,
        "osType": {"enum": ["Linux", "Windows"]},
        "osSKU": {"enum": ["Ubuntu", "AzureLinux", "CBLMariner", "Windows2019", "Windows2022"]},
        "orchestratorVersion": _STR,
        "type": {"enum": ["VirtualMachineScaleSets", "AvailabilitySet"]},
        "nodeLabels": _STR_MAP,
        "nodeTaints": {"type": "array", "items": {
            "type": "string", "pattern": r"^[^=:]+(=[^:]*)?:(NoSchedule|PreferNoSchedule|NoExecute)$"}},
        "scaleSetPriority": {"enum": ["Regular", "Spot"]},
        "scaleSetEvictionPolicy": {"enum": ["Delete", "Deallocate"]},
        "spotMaxPrice": {"type": "number"},
    },
})

# (apiVersion, kind) -> schema
_QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"},
                       {"type": "integer", "minimum": 0}]}
_RESOURCES = {"type": "object", "additionalProperties": False, "properties": {
    part: {"type": "object", "additionalProperties": _QUANTITY} for part in ("requests", "limits")}}
_RUNTIME_CONTAINER = {"type": "object", "additionalProperties": False, "required": ["name", "image"], "properties": {
    "name": _STR, "image": _STR,
    "command": {"type": "array", "items": _STR}, "args": {"type": "array", "items": _STR},
    "ports": {"type": "array", "items": {"type": "object", "additionalProperties": False, "required": ["containerPort"],
                                         "properties": {"containerPort": {"type": "integer", "minimum": 1,
                                                                          "maximum": 65535},
                                                        "name": _STR, "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}}},
    "env": {"type": "array", "items": {"type": "object", "additionalProperties": False, "required": ["name"],
                                       "properties": {"name": _STR, "value": _STR}}},
    "resources": _RESOURCES,
}}
SERVING_RUNTIME = _object("serving.kserve.io/v1alpha1", "ServingRuntime", {
    "type": "object", "additionalProperties": False, "required": ["supportedModelFormats", "containers"],
    "properties": {
        "supportedModelFormats": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": _STR, "version": _STR, "autoSelect": {"type": "boolean"},
                           "priority": {"type": "integer", "minimum": 1}}}},
        "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
        "annotations": _STR_MAP,
        "containers": {"type": "array", "minItems": 1, "items": _RUNTIME_CONTAINER},
    },
})

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): SERVING_RUNTIME,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _service_monitor("monitoring.coreos.com/v1"),
    ("azmonitoring.coreos.com/v1", "ServiceMonitor"): _service_monitor("azmonitoring.coreos.com/v1"),
    ("cilium.io/v2", "CiliumNetworkPolicy"): CILIUM_NETWORK_POLICY,
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"): SECRET_PROVIDER_CLASS,
    ("containerservice.azure.com/v1api20240901", "ManagedClustersAgentPool"): AGENT_POOL,
}
