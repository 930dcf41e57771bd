"""Sub-commands for getting started: `init`, `components`, `models` and `completion`.

Run as: tuneline init my-project            (a repository with one pipeline and one custom component)
        tuneline components [NAME]          (shipped and project components; NAME shows its inputs)
        tuneline models                     (base models by name; any local folder or Hub id works too)
        source <(tuneline completion bash)
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

# ---------------------------------------------------------------------------------------------- init

PIPELINE = """\
# Run as: tuneline run pipelines/{name}.yaml
# Your data: tuneline run pipelines/{name}.yaml --set dataset=path/to/data.csv \\
#              --set prepare.columns=prompt=question,completion=answer
# Shipped components are named tuneline/<name> (`tuneline components` lists them); your own are folders under
# components/, relative to this repository's root.
name: {name}
description: Fine-tune a small model on data/examples.jsonl; inspect_data is this repository's own component.
params:
  dataset:     {{type: uri_file, default: data/examples.jsonl, description: "a file, or a folder of them"}}
  base_model:  {{type: string, default: smollm2-135m-instruct, description: "catalog name, model folder or Hub id"}}
  max_steps:   {{type: integer, default: 8}}
  gate_metric: {{type: string, default: rouge_l}}
steps:
  prepare:
    component: tuneline/prepare
    inputs:
      raw: ${{{{params.dataset}}}}
      validation_ratio: 0.1
      test_ratio: 0.2
  inspect:
    component: components/inspect_data
    inputs:
      data: ${{{{steps.prepare.outputs.train}}}}
      min_records: 10
  train:
    component: tuneline/train
    inputs:
      train: ${{{{steps.prepare.outputs.train}}}}
      validation: ${{{{steps.prepare.outputs.validation}}}}
      base_model: ${{{{params.base_model}}}}
      max_steps: ${{{{params.max_steps}}}}
  evaluate:
    component: tuneline/evaluate
    inputs:
      test: ${{{{steps.prepare.outputs.test}}}}
      model: ${{{{steps.train.outputs.model}}}}
      base_model: ${{{{params.base_model}}}}
      gate_metric: ${{{{params.gate_metric}}}}
      mlflow_run_id: ${{{{steps.train.outputs.mlflow_run_id}}}}
"""

COMPONENT = """\
# Run as: python components/inspect_data/inspect_data.py --data DIR --min-records 10 --report r.json --records n
name: inspect_data
version: 0.1.0
description: Counts the records of a prepared split and fails when there are too few to train on.
environment: train-cpu
inputs:
  data:        {type: uri_folder, description: "a split written by prepare (data.jsonl of chat records)"}
  min_records: {type: integer, min: 0, default: 10}
outputs:
  report:  {type: uri_file, description: "record count and answer lengths (JSON)"}
  records: {type: integer}
command: >-
  python components/inspect_data/inspect_data.py --data ${{inputs.data}} --min-records ${{inputs.min_records}}
  --report ${{outputs.report}} --records ${{outputs.records}}
"""

PROGRAM = '''\
"""Count a prepared split's records; exit 2 when there are fewer than --min-records.

Run as: python components/inspect_data/inspect_data.py --data DIR --min-records 10 --report r.json --records n
"""

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--min-records", type=int, default=10)
    parser.add_argument("--report", required=True)
    parser.add_argument("--records", required=True)
    args = parser.parse_args()
    records = [json.loads(line) for line in (Path(args.data) / "data.jsonl").read_text().splitlines() if line]
    answers = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
    report = {"records": len(records), "mean_answer_chars": sum(map(len, answers)) / max(len(answers), 1)}
    Path(args.report).write_text(json.dumps(report, indent=2))
    Path(args.records).write_text(json.dumps(len(records)))
    progress = os.environ.get("TUNELINE_PROGRESS")  # one JSON line per update; the run table shows the last
    if progress:
        with open(progress, "a") as fh:
            fh.write(json.dumps({"current": len(records), "total": len(records), "unit": "record",
                                 "metrics": {"mean_answer_chars": round(report["mean_answer_chars"], 1)}}) + "\\n")
    summary = os.environ.get("TUNELINE_STEP_SUMMARY")  # shown at the end of a tuneline run
    if summary:
        Path(summary).write_text(f"{len(records)} training records, answers {report['mean_answer_chars']:.0f} "
                                 "characters on average\\n")
    if len(records) < args.min_records:
        print(f"only {len(records)} records, fewer than --min-records {args.min_records}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _examples() -> str:
    """Prompt/completion records different enough that deduplication keeps them all."""
    lines = []
    for number in range(40):
        digits = " ".join(WORDS[int(d)] for d in str(number * 37 + 11))
        lines.append(json.dumps({"prompt": f"Spell the digits of {number * 37 + 11} as words.", "completion": digits}))
    return "\n".join(lines) + "\n"


def cmd_init(args: argparse.Namespace) -> int:
    root = Path(args.folder)
    name = args.name or (root.resolve().name.lower().replace(" ", "-").replace("_", "-") or "my-pipeline")
    if not name[0].isalpha():
        name = "p-" + name
    files = {
        root / "pipelines" / f"{name}.yaml": PIPELINE.format(name=name),
        root / "components" / "inspect_data" / "component.yaml": COMPONENT,
        root / "components" / "inspect_data" / "inspect_data.py": PROGRAM,
        root / "data" / "examples.jsonl": _examples(),
        root / ".gitignore": ".tuneline/\n",
    }
    existing = [str(p) for p in files if p.exists()]
    if existing:
        print(f"tuneline init: not overwriting {', '.join(existing)}", file=sys.stderr)
        return EXIT_INVALID
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"created {len(files)} files in {root}/:\n" + "\n".join(f"  {p.relative_to(root)}" for p in files))
    print(f"next:\n  cd {root}\n  tuneline validate pipelines\n  tuneline run pipelines/{name}.yaml --dry-run\n"
          f"  tuneline run pipelines/{name}.yaml")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- components


def _component_folders() -> dict[str, Path]:
    """Reference -> folder: shipped ones as tuneline/<name>, then the current project's components/<name>."""
    from .. import settings
    from ..spec.load import SHIPPED_COMPONENTS, SHIPPED_PREFIX, shipped_components

    found = {f"{SHIPPED_PREFIX}{n}": SHIPPED_COMPONENTS / n for n in shipped_components()}
    project = settings.project_root()
    if project is not None and (project / "components").resolve() != SHIPPED_COMPONENTS:
        for folder in sorted((project / "components").glob("*/component.yaml")):
            found[f"components/{folder.parent.name}"] = folder.parent
    return found


def cmd_components(args: argparse.Namespace) -> int:
    from ..spec import SpecError, load_component

    folders = _component_folders()
    if not args.name:
        print(f"{'component:':<28} description")
        for reference, folder in folders.items():
            try:
                description = textwrap.shorten(load_component(folder).spec.description, 90, placeholder=" …")
            except SpecError as exc:
                description = f"(invalid: {exc.problems[0]})"
            print(f"{reference:<28} {description}")
        print("\nuse one in a pipeline step as `component: <reference>`; `tuneline components NAME` shows its inputs")
        return EXIT_OK
    matches = [r for r in folders if args.name in (r, r.split("/")[-1])]
    folder = folders[matches[0]] if matches else Path(args.name)
    if not (folder / "component.yaml").is_file():
        print(f"tuneline components: no component '{args.name}' (known: {', '.join(folders)})", file=sys.stderr)
        return EXIT_FAILED
    try:
        spec = load_component(folder).spec
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    print(f"{spec.name} {spec.version}: {spec.description}\n{folder / 'component.yaml'}\ninputs:")
    for name, spec_in in spec.inputs.items():
        default = "required" if spec_in.required else ("optional" if spec_in.default is None
                                                       else f"default {spec_in.default!r}")
        kind = f", {spec_in.kind}" if spec_in.kind else ""
        print(f"  {name:<24} {spec_in.type.value}{kind}, {default}  {spec_in.description}".rstrip())
    print("outputs:")
    for name, spec_out in spec.outputs.items():
        print(f"  {name:<24} {spec_out.type.value}  {spec_out.description}".rstrip())
    print("override one input of one step: tuneline run PIPELINE --set STEP.INPUT=VALUE")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    from .. import settings
    from ..llm.ml.models import CATALOG

    cache = settings.state_home(args.home) / "models"
    print(f"{'name':<24} {'on disk':<10} description")
    for name, entry in sorted(CATALOG.items()):
        on_disk = "yes" if (cache / name / "config.json").is_file() else "first use"
        print(f"{name:<24} {on_disk:<10} {entry.description}")
    print(f"\nbase_model also takes a local folder holding a Hugging Face model (config.json, weights, tokenizer),\n"
          f"or a Hub id org/name, downloaded on first use (needs network). Built models live in {cache}.")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- completion

COMPLETION = """\
# bash completion for tuneline; enable with: source <(tuneline completion bash)
declare -A _tuneline_words=(
{table}
)
_tuneline() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} path=tuneline key i
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in
      -*) ;;
      *) key="$path ${{COMP_WORDS[i]}}"
         [[ -n "${{_tuneline_words[$key]+set}}" ]] && path=$key ;;
    esac
  done
  COMPREPLY=($(compgen -W "${{_tuneline_words[$path]}}" -- "$cur"))
}}
complete -o default -F _tuneline tuneline
"""


def _words(parser: argparse.ArgumentParser, path: str, table: dict[str, list[str]]) -> None:
    """`table[path]`: the sub-commands, then the long options, that may follow the words of `path`."""
    commands = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands.append(name)
                _words(sub, f"{path} {name}", table)
    table[path] = commands + [o for action in parser._actions for o in action.option_strings if o.startswith("--")]


def completion_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for every command and long option `parser` knows (`tuneline completion bash`)."""
    table: dict[str, list[str]] = {}
    _words(parser, "tuneline", table)
    rows = "\n".join(f'  ["{key}"]="{" ".join(words)}"' for key, words in table.items())
    return COMPLETION.format(table=rows)


# ---------------------------------------------------------------------------------------------- parser


def add_commands(subparsers) -> None:
    init = subparsers.add_parser("init", help="create a repository with one pipeline and one custom component")
    init.add_argument("folder", nargs="?", default=".", help="where to create it (default: the current folder)")
    init.add_argument("--name", default=None, help="pipeline name (default: the folder's name)")
    init.set_defaults(handler=cmd_init)

    components = subparsers.add_parser("components", help="list components: shipped (tuneline/<name>) and yours")
    components.add_argument("name", nargs="?", default=None, help="show this component's inputs and outputs")
    components.set_defaults(handler=cmd_components)

    models = subparsers.add_parser("models", help="list the base models known by name")
    models.add_argument("--home", default=None, help="state folder (default: $TUNELINE_HOME, else .tuneline/ in the "
                                                     "project of the current folder)")
    models.set_defaults(handler=cmd_models)
