"""The import scanner behind the step cache key sees every import form."""

from pathlib import Path

from tuneline.step.cache import shared_code, step_cache_key
from tuneline.step.imports import imported_modules, module_files


def _write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_import_form_is_seen(tmp_path: Path):
    _write(tmp_path / "pkg" / "__init__.py")
    source = _write(tmp_path / "pkg" / "sub" / "a.py",
                    "import pkg.x\nfrom . import b\nfrom ..y import z\nfrom .c import *\n"
                    "def f():\n    from pkg.sub.d import e\n")
    seen = imported_modules(source, tmp_path)
    assert {"pkg.x", "pkg.sub.b", "pkg.y", "pkg.y.z", "pkg.sub.c", "pkg.sub.d", "pkg.sub.d.e"} <= seen


def test_module_files_include_the_enclosing_packages(tmp_path: Path):
    init = _write(tmp_path / "pkg" / "__init__.py")
    module = _write(tmp_path / "pkg" / "mod.py")
    assert module_files("pkg.mod.some_function", tmp_path) == [init, module]
    assert module_files("numpy", tmp_path) == []


def test_the_cache_key_follows_relative_imports_in_shared_code(tmp_path: Path):
    """A component importing a helper module that itself uses a relative import: editing the second one
    changes the key."""
    _write(tmp_path / "components" / "__init__.py")
    component = tmp_path / "components" / "step"
    _write(component / "__init__.py")
    _write(component / "__main__.py", "import components.shared.helper\n")
    _write(tmp_path / "components" / "shared" / "__init__.py")
    _write(tmp_path / "components" / "shared" / "helper.py", "from . import deeper\n")
    deeper = _write(tmp_path / "components" / "shared" / "deeper.py", "VALUE = 1\n")
    assert deeper.resolve() in shared_code(component)
    before = step_cache_key(component, {}, {})
    deeper.write_text("VALUE = 2\n")
    assert step_cache_key(component, {}, {}) != before


def test_a_component_s_shared_tuneline_modules_are_found():
    repo = Path(__file__).resolve().parents[2]
    found = {p.relative_to(repo).as_posix() for p in shared_code(repo / "components" / "prepare")}
    assert {"tuneline/step/args.py", "tuneline/llm/data/records.py", "tuneline/spec/models.py"} <= found
    assert "tuneline/targets/kfp/compiler.py" not in found
