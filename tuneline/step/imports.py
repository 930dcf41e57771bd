"""Which modules a Python file imports, read with `ast` so every form counts.

`import tuneline.x`, `from tuneline.x import y`, `from . import y`, `from ..x import y`, and imports inside
functions or `if TYPE_CHECKING:` blocks all count. The step cache uses this to know which shared code a
component runs (`tuneline.step.cache`); the tests use it to keep the package's import graph free of cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """`root/a/b/c.py` -> `a.b.c`; `root/a/b/__init__.py` -> `a.b`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Dotted names `path` imports anywhere in its body; `root` is the folder its top-level package is in.

    `from x import y` yields both `x` and `x.y`, since y may be a submodule; names that are not modules are
    dropped by whoever maps names to files.
    """
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            stem = (node.module or "") if node.level == 0 else ".".join(p for p in (base, node.module) if p)
            if stem:
                found.add(stem)
            found |= {f"{stem}.{alias.name}" if stem else alias.name for alias in node.names if alias.name != "*"}
    return found


def module_files(dotted: str, root: Path) -> list[Path]:
    """The files that importing `dotted` runs: each enclosing package's `__init__.py`, then the module itself."""
    parts = dotted.split(".")
    files = []
    for depth in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
            break  # what follows names something inside the module
        elif not base.is_dir():
            break  # a namespace package folder goes on; anything else is not ours
    return files
