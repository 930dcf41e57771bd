"""Local serving from the command line: blue/green deploy a model folder, show what runs, stop it all.

Run as: python -m tuneline.serving {deploy,status,stop} [--state-dir DIR]
        e.g. python -m tuneline.serving deploy --model-dir runs/model --port 8000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tuneline.serving.local import default_state_dir, status, stop_all
from tuneline.serving.repository import RepositorySpec
from tuneline.serving.rollout import rollout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneline.serving", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state folder (default $TUNELINE_SERVE_STATE or <TUNELINE_HOME>/serve)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dep = sub.add_parser("deploy", help="blue/green deploy a model folder behind the proxy")
    dep.add_argument("--model-dir", type=Path, required=True, help="HF model folder or PEFT adapter folder")
    dep.add_argument("--base-model-dir", type=Path, default=None, help="base model for an adapter")
    dep.add_argument("--name", default="tuneline-llm", help="Triton model name (default %(default)s)")
    dep.add_argument("--port", type=int, default=None, help="proxy port when it is started (default: a free one)")
    dep.add_argument("--no-dynamic-batching", action="store_true", help="serve without the dynamic batcher")
    sub.add_parser("status", help="print what runs, as JSON")
    sub.add_parser("stop", help="stop all servers and the proxy, freeing their ports")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or default_state_dir()
    if args.command == "stop":
        freed = stop_all(state_dir)
        print(f"stopped; ports freed: {sorted(freed) or 'none'}")
        return 0
    if args.command == "status":
        print(json.dumps(status(state_dir), indent=2))
        return 0
    result = rollout(
        args.model_dir,
        base_model_dir=args.base_model_dir,
        state_dir=state_dir,
        proxy_port=args.port,
        spec=RepositorySpec(model_name=args.name, dynamic_batching=not args.no_dynamic_batching),
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
