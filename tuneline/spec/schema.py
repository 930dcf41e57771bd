"""JSON Schemas of pipeline and component YAML, generated from the models, for editor autocompletion.

Run as: python -m tuneline.spec.schema --write     (or --check, which fails when a committed file is stale)

Editors pick them up from a first-line comment such as
`# yaml-language-server: $schema=schema.json` in pipelines/*.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .models import ComponentSpec, PipelineSpec

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {
    Path("pipelines/schema.json"): (PipelineSpec, "tuneline pipeline"),
    Path("components/schema.json"): (ComponentSpec, "tuneline component"),
}


def render(model: type, title: str) -> str:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the schema files (default)")
    mode.add_argument("--check", action="store_true", help="exit 1 when a schema file is stale")
    parser.add_argument("--root", default=str(ROOT), help="project root holding pipelines/ and components/")
    args = parser.parse_args(argv)
    stale = []
    for relative, (model, title) in TARGETS.items():
        path = Path(args.root) / relative
        text = render(model, title)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(relative))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {relative}")
    if stale:
        print(f"stale: {', '.join(stale)}; run `make schema`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
