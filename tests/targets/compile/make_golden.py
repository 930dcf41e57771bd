"""Regenerate the golden compiled files for every pipeline in pipelines/ and every fixture pipeline.

Run as: make golden      (or: .venv/bin/python tests/targets/compile/make_golden.py)
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GOLDEN = HERE / "golden"
FIXTURE_PIPELINES = HERE / "fixtures" / "project" / "pipelines"
_RELATIVE = re.compile(r"^(\s*(?:code|path): )(\S+)$", re.M)


def sources() -> dict[Path, Path]:
    """pipeline file -> its golden folder."""
    found = {p: GOLDEN / p.stem for p in sorted((ROOT / "pipelines").glob("*.yaml"))}
    found.update({p: GOLDEN / "fixtures" / p.stem for p in sorted(FIXTURE_PIPELINES.glob("*.yaml"))})
    return found


def normalise(text: str, file: Path) -> str:
    """Relative `code:`/`path:` values depend on where the output folder is: compare where they point."""
    def point(match: re.Match[str]) -> str:
        value = match.group(2)
        if "://" in value or value.startswith("azureml:") or value.startswith("./"):
            return match.group(0)
        target = os.path.normpath(file.parent / value)
        return f"{match.group(1)}<root>/{os.path.relpath(target, ROOT)}"
    return _RELATIVE.sub(point, text)


def compile_to(pipeline: Path, folder: Path) -> list[Path]:
    from tuneline.graph import build_graph
    from tuneline.spec import load_pipeline
    from tuneline.targets.build import TARGETS, compile_graph
    from tuneline.targets.options import CompileOptions

    return compile_graph(build_graph(load_pipeline(pipeline)), TARGETS, folder, CompileOptions()).files


def main() -> int:
    sys.path.insert(0, str(ROOT))
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    from tuneline.spec import SpecError
    from tuneline.targets import CompileError

    failed = 0
    for pipeline, folder in sources().items():
        try:
            files = compile_to(pipeline, folder)
        except (SpecError, CompileError) as exc:
            failed += 1
            print(f"{pipeline.relative_to(ROOT)}: NOT compiled:\n{exc}", file=sys.stderr)
            continue
        print(f"{pipeline.relative_to(ROOT)}: {len(files)} files -> {folder.relative_to(ROOT)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
