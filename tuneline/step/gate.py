"""Run a step's command only when its `when:` gate is true; otherwise complete as skipped.

Run as (a compiled KFP or Azure ML step does this; the arguments come from the compiler):
    python -m tuneline.step.gate --gate true --skip model_uri:string:/tmp/out/model_uri -- python -m ...

This is how `when:` behaves on every cluster target, the same as `tuneline run` does locally: a step whose gate is
false does nothing and records "skipped: gate not passed". On a cluster the step still has to finish, and it has to
leave every declared output behind (KFP's launcher and Azure ML both collect the outputs of a finished step), so a
skipped step writes a marker in each artifact output and the type's zero value in each value output. A boolean
zero is `false`, so a step gated on a skipped step's boolean output skips too. The validator
(`tuneline.spec.load`) makes sure no step ever consumes a skipped step's outputs otherwise.

Azure ML has no primitive outputs, so there the gate arrives as a folder holding the value file; KFP passes the
boolean parameter itself. Only the standard library is used: the wrapper runs before the step's own imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

GATE_MODULE = "tuneline.step.gate"
GATE_INPUT = "tuneline_gate"
SKIPPED = "skipped: gate not passed"
SKIP_MARKER = "SKIPPED"
VALUE_FILE = "value"  # an Azure ML value output is a folder holding this file
ZERO = {"boolean": "false", "integer": "0", "number": "0", "string": ""}
KINDS = ("folder", "file", *ZERO)


def gate_value(text: str) -> bool:
    """`true`/`false` as KFP renders a boolean, or the path of a file (or value folder) holding it."""
    raw = text
    if "/" in text:
        path = Path(text)
        path = path / VALUE_FILE if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"gate: {path} does not exist")
        raw = path.read_text()
    value = raw.strip().strip('"').lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise SystemExit(f"gate: expected a boolean, got {raw[:40]!r}")


def write_skipped(kind: str, path: Path) -> None:
    if kind == "folder":
        path.mkdir(parents=True, exist_ok=True)
        (path / SKIP_MARKER).write_text(SKIPPED + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SKIPPED + "\n" if kind == "file" else ZERO[kind])


def _skip_spec(item: str) -> tuple[str, str, Path]:
    name, sep, rest = item.partition(":")
    kind, sep2, path = rest.partition(":")
    if not (sep and sep2 and kind in KINDS and path):
        raise SystemExit(f"gate: --skip expects NAME:KIND:PATH with KIND one of {', '.join(KINDS)}, got {item!r}")
    return name, kind, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("gate: the step's command follows `--`")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog=GATE_MODULE, description="Run the command when the gate is true.")
    parser.add_argument("--gate", required=True, help="true/false, or a file/value folder holding it")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME:KIND:PATH",
                        help="an output to fill when skipped (KIND: folder, file, boolean, integer, number, string)")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("gate: no command after `--`")
    outputs = [_skip_spec(item) for item in args.skip]
    if gate_value(args.gate):
        sys.stdout.flush()
        os.execvp(command[0], command)  # the step runs as if the wrapper were not there
    for _name, kind, path in outputs:
        write_skipped(kind, path)
    print(f"{os.environ.get('TUNELINE_STEP', 'step')}: {SKIPPED}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
