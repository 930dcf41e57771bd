"""Find a target by name: a shipped one by its folder (tuneline/targets/<name>/target.py), or one registered at
run time (a plugin, a test)."""

from __future__ import annotations

import importlib

from ..spec.targets import compile_targets
from . import CompileError
from .base import Target

_REGISTERED: dict[str, Target] = {}


def register(target: Target) -> None:
    _REGISTERED[target.name] = target


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def names() -> tuple[str, ...]:
    return (*compile_targets(), *sorted(set(_REGISTERED) - set(compile_targets())))


def get(name: str) -> Target:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in compile_targets():
        # Imported only when asked for: the KFP SDK alone takes about a second.
        return importlib.import_module(f"{__package__}.{name}.target").TARGET
    raise CompileError(f"unknown target {name!r}; one of {', '.join(names())}")
