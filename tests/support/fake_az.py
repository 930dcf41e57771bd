"""A stand-in for `az ml online-endpoint` / `az ml online-deployment`, for testing apply.sh and rollback.sh.

Run as: python tests/support/fake_az.py ml online-endpoint show -n NAME   (with FAKE_AZ_STATE and FAKE_AZ_LOG set)

No Azure ML workspace can be reached here, so this keeps an endpoint's state in a JSON file and enforces the rules
the service applies (https://learn.microsoft.com/azure/machine-learning/how-to-safely-rollout-online-endpoints,
https://learn.microsoft.com/cli/azure/ml/online-endpoint): files are read with azure-ai-ml's own loaders, as `az ml`
does; a deployment needs its endpoint; `create` refuses an existing one and `update` a missing one; traffic may name
only existing deployments and must add up to 100, and deployments it does not name get 0; a deployment taking
traffic cannot be deleted. A deployment's inline model
is registered as the workspace registers it: with a version, that `name:version` must be new or already hold the
same path ("Asset paths cannot be updated"; the workspace registry also holds what the MLflow registry registered,
seeded under "models"), and without one it gets the next version (azure-ai-ml `_auto_increment_version`).
Every call is logged, one line each, to FAKE_AZ_LOG.
Queries: only the two forms the scripts use (`traffic.<slot> || \\`0\\``, `tags.<key>`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path


def _state() -> tuple[Path, dict]:
    path = Path(os.environ["FAKE_AZ_STATE"])
    return path, json.loads(path.read_text()) if path.is_file() else {"endpoints": {}}


def _fail(message: str) -> int:
    print(f"ERROR: {message}", file=sys.stderr)
    return 1


def _query(body: dict, query: str) -> str:
    found = re.fullmatch(r"traffic\.(\w+) \|\| `0`", query)
    if found:
        return str(body["traffic"].get(found.group(1), 0))
    found = re.fullmatch(r"tags\.(\w+)", query)
    if found:
        return str(body["tags"].get(found.group(1), ""))
    raise SystemExit(f"fake az: unsupported --query {query!r}")


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_AZ_LOG"], "a") as log:
        log.write(" ".join(argv) + "\n")
    ap = argparse.ArgumentParser(prog="az")
    ap.add_argument("group", choices=["ml"])
    ap.add_argument("kind", choices=["online-endpoint", "online-deployment"])
    ap.add_argument("verb", choices=["show", "create", "update", "delete"])
    ap.add_argument("--yes", action="store_true")
    ap.add_argument("-n", "--name")
    ap.add_argument("-e", "--endpoint-name")
    ap.add_argument("-f", "--file")
    ap.add_argument("--query")
    ap.add_argument("-o", "--output")
    ap.add_argument("--traffic")
    ap.add_argument("--set", nargs="+", default=[])
    args = ap.parse_args(argv)
    path, state = _state()
    endpoints = state["endpoints"]
    if args.kind == "online-endpoint":
        if args.verb == "create":
            from azure.ai.ml import load_online_endpoint

            entity = load_online_endpoint(args.file)
            if entity.name in endpoints:
                return _fail(f"endpoint {entity.name} already exists")
            if entity.traffic:
                return _fail(f"traffic {dict(entity.traffic)} names deployments that do not exist")
            endpoints[entity.name] = {"auth_mode": entity.auth_mode, "traffic": {}, "tags": {}, "deployments": {}}
        else:
            body = endpoints.get(args.name)
            if body is None:
                return _fail(f"ResourceNotFound: endpoint {args.name}")
            if args.verb == "show":
                if args.output != "none":
                    print(_query(body, args.query) if args.query else json.dumps(body))
                return 0
            if args.traffic is not None:
                traffic = {k: int(v) for k, v in (item.split("=") for item in args.traffic.split())}
                unknown = set(traffic) - set(body["deployments"])
                if unknown:
                    return _fail(f"traffic names deployments that do not exist: {sorted(unknown)}")
                if sum(traffic.values()) != 100:
                    return _fail(f"traffic {traffic} does not add up to 100")
                body["traffic"] = {d: traffic.get(d, 0) for d in body["deployments"]}
            for item in args.set:
                key, value = item.split("=", 1)
                if not key.startswith("tags."):
                    return _fail(f"fake az: unsupported --set {item}")
                body["tags"][key[len("tags."):]] = value
    else:
        body = endpoints.get(args.endpoint_name)
        if body is None:
            return _fail(f"ResourceNotFound: endpoint {args.endpoint_name}")
        exists = args.name in body["deployments"]
        if args.verb == "show":
            return 0 if exists else _fail(f"ResourceNotFound: deployment {args.name}")
        if args.verb == "delete":
            if not exists:
                return _fail(f"ResourceNotFound: deployment {args.name}")
            if body["traffic"].get(args.name, 0):
                return _fail(f"deployment {args.name} takes traffic: set it to 0 before deleting it")
            if not args.yes:
                return _fail("delete asks for confirmation: pass --yes")
            del body["deployments"][args.name]
            body["traffic"].pop(args.name, None)
            path.write_text(json.dumps(state, indent=1))
            return 0
        if args.verb == "create" and exists:
            return _fail(f"deployment {args.name} already exists")
        if args.verb == "update" and not exists:
            return _fail(f"ResourceNotFound: deployment {args.name}")
        from azure.ai.ml import load_online_deployment

        entity = load_online_deployment(args.file)
        model = entity.model
        versions = state.setdefault("models", {}).setdefault(model.name, {})
        version = model.version or str(max((int(v) for v in versions), default=0) + 1)
        if versions.get(version, str(model.path)) != str(model.path):
            return _fail(f"Asset paths cannot be updated: model {model.name}:{version} already exists with path "
                         f"{versions[version]}")
        versions[version] = str(model.path)
        body["deployments"][args.name] = {"model_name": model.name, "model_version": version,
                                          "model_path": str(model.path), "tags": dict(model.tags or {})}
        body["traffic"].setdefault(args.name, 0)
    path.write_text(json.dumps(state, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
