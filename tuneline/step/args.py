"""A component program's typed, validated arguments, built from its own `component.yaml`.

`component.yaml` is the one declaration of a component's interface. This module turns it into the program's
command line, so declaring an input there and passing it in the command is all a program needs to accept it:

    from tuneline.step.args import parse_component_args
    args = parse_component_args(__file__, argv)      # reads the component.yaml beside this file
    args.learning_rate                               # float, checked against min/max/enum

- Flags come from the command template: `--learning-rate ${{inputs.learning_rate}}` makes `--learning-rate`
  the flag of input `learning_rate`, `--model-out ${{outputs.model}}` that of output `model`.
- Types: integer -> int, number -> float, boolean -> bool (true/false), string -> str; artifact inputs and
  every output are paths. min/max/enum are checked, and a refused value names its input.
- An input with a default or `optional: true` may be left out (optional ones are then None); outputs and
  the other inputs are required. Help text is the description, plus the default and the allowed values.

argparse does the parsing (usage errors exit 2, `--help` lists every input); the values come back as a frozen
dataclass generated from the spec, so code that needs a typed object gets one without a second declaration.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from tuneline.spec.command import flags
from tuneline.spec.load import load_component
from tuneline.spec.models import (
    ComponentSpec,
    InputSpec,
    IOType,
    check_value,
    parse_cli_value,
)

_PYTHON_TYPES = {IOType.integer: int, IOType.number: float, IOType.boolean: bool, IOType.string: str}


def command_flags(spec: ComponentSpec) -> dict[tuple[str, str], str]:
    """(inputs|outputs, name) -> the `--flag` written right before its placeholder in the component's command."""
    return flags(spec.command_items)


def _converter(name: str, spec: InputSpec):
    def convert(text: str) -> Any:
        try:
            value = parse_cli_value(spec.type, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"input '{name}': {err}") from None
        problem = check_value(spec, value)
        if problem:
            raise argparse.ArgumentTypeError(f"input '{name}': {problem}")
        return Path(value) if spec.type.is_artifact else value

    convert.__name__ = spec.type.value
    return convert


def _typed_default(spec: InputSpec) -> Any:
    if spec.default is None:
        return None
    if spec.type.is_artifact:
        return Path(spec.default)
    return float(spec.default) if spec.type == IOType.number else spec.default


def _help(spec: InputSpec) -> str:
    parts = [spec.description or spec.type.value]
    if spec.enum is not None:
        parts.append(f"one of {', '.join(map(str, spec.enum))}")
    if spec.min is not None or spec.max is not None:
        parts.append(f"range [{'' if spec.min is None else f'{spec.min:g}'}, "
                     f"{'' if spec.max is None else f'{spec.max:g}'}]")
    if spec.default is not None:
        parts.append(f"default: {str(spec.default).lower() if isinstance(spec.default, bool) else spec.default}")
    elif spec.optional:
        parts.append("optional")
    return "; ".join(parts).replace("%", "%%")


def build_parser(spec: ComponentSpec, prog: str | None = None) -> argparse.ArgumentParser:
    flag_of = command_flags(spec)
    parser = argparse.ArgumentParser(prog=prog or f"python -m components.{spec.name}",
                                     description=spec.description)
    for name, inp in spec.inputs.items():
        parser.add_argument(flag_of.get(("inputs", name), "--" + name.replace("_", "-")), dest=name,
                            type=_converter(name, inp), required=inp.required,
                            default=_typed_default(inp),
                            metavar=inp.type.value.upper(), help=_help(inp))
    outputs = parser.add_argument_group("outputs")
    for name, out in spec.outputs.items():
        outputs.add_argument(flag_of.get(("outputs", name), f"--{name.replace('_', '-')}-out"), dest=name,
                             type=Path, required=True, metavar="PATH",
                             help=f"{out.description or out.type.value} ({out.type.value} output)")
    return parser


def args_class(spec: ComponentSpec) -> type:
    """A frozen dataclass with one typed field per input and output of `spec`."""

    def kind(inp: InputSpec) -> Any:
        base = Path if inp.type.is_artifact else _PYTHON_TYPES[inp.type]
        return base | None if inp.default is None and inp.optional else base

    fields = [(n, kind(i)) for n, i in spec.inputs.items()] + [(n, Path) for n in spec.outputs]
    name = "".join(part.title() for part in spec.name.replace("-", "_").split("_")) + "Args"

    def parameters(self) -> dict[str, Any]:
        """The values of the non-artifact inputs (hyperparameters, options), in declaration order."""
        return {n: getattr(self, n) for n, i in spec.inputs.items() if not i.type.is_artifact}

    return dataclasses.make_dataclass(name, fields, frozen=True,
                                      namespace={"parameters": parameters, "spec": spec})


@dataclasses.dataclass(frozen=True)
class ComponentProgram:
    """A component's spec, with the parser and the typed arguments object generated from it."""

    spec: ComponentSpec
    args_type: type

    def parser(self, prog: str | None = None) -> argparse.ArgumentParser:
        return build_parser(self.spec, prog)

    def parse(self, argv: list[str] | None = None, prog: str | None = None) -> Any:
        """Parse `argv` (default: sys.argv[1:]); exits 2, naming the input, on a refused value."""
        return self.args_type(**vars(self.parser(prog).parse_args(argv)))


def how_to_set(name: str, value: str) -> str:
    """How the user gives input `name` of the running component: `--set STEP.name=value` under `tuneline run`
    (whose runner names the step in `$TUNELINE_STEP`), else the program's own flag, so an error message a
    component prints names the way its user actually runs it."""
    step = os.environ.get("TUNELINE_STEP")
    return f"--set {step}.{name}={value}" if step else f"--{name.replace('_', '-')} {value}"


def component_program(where: str | Path) -> ComponentProgram:
    """The program of the component whose folder is `where`, or holds the file `where` (e.g. `__file__`)."""
    folder = Path(where)
    spec = load_component(folder if folder.is_dir() else folder.parent).spec
    return ComponentProgram(spec, args_class(spec))


def parse_component_args(where: str | Path, argv: list[str] | None = None, prog: str | None = None) -> Any:
    """Parse `argv` against the component.yaml beside `where`; see `ComponentProgram.parse`."""
    return component_program(where).parse(argv, prog)
