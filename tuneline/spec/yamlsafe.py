"""Load YAML defensively and remember where every key and value came from.

PyYAML's own loaders expand aliases into shared objects, keep the last of duplicate keys silently and lose
line numbers. Validation errors must point at `file:line:col`, so we compose the node tree ourselves and
build plain Python data plus a map from each data path to its source position.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .problems import Problem, SpecError

MAX_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
# Counted after alias expansion: a "billion laughs" file is tiny on disk but explodes here.
MAX_NODES = 200_000

DataPath = tuple[Any, ...]
# libyaml's scanner and composer are 5-7x faster than PyYAML's pure-Python ones (1 MB: 2.1 s against 10.5 s).
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Loaded:
    path: str
    data: Any
    positions: dict[DataPath, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[DataPath, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: DataPath, key: bool = False) -> tuple[int, int]:
        """Position of the value at `loc` (or of its key), falling back to the nearest known ancestor."""
        loc = tuple(loc)
        table = self.key_positions if key else self.positions
        while loc:
            if loc in table:
                return table[loc]
            if loc in self.positions:
                return self.positions[loc]
            loc = loc[:-1]
        return self.positions.get((), (1, 1))

    def problem(self, loc: DataPath, message: str, key: bool = False) -> Problem:
        line, col = self.where(loc, key=key)
        return Problem(self.path, line, col, message)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.nodes = 0
        self.problems: list[Problem] = []
        self.constructor = yaml.SafeLoader("")  # only used to resolve scalar tags (int, float, bool, null)

    def build(self, node: yaml.Node, loc: DataPath, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SpecError([Problem(self.loaded.path, *_mark(node),
                                     f"document expands to more than {MAX_NODES} nodes (alias bomb?); refused")])
        if depth > MAX_DEPTH:
            raise SpecError([Problem(self.loaded.path, *_mark(node),
                                     f"nesting deeper than {MAX_DEPTH} levels; refused")])
        self.loaded.positions[loc] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self.constructor.construct_object(node, deep=False)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, loc + (i,), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)  # applies `<<` merge keys
            out: dict[Any, Any] = {}
            first_seen: dict[Any, tuple[int, int]] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, loc + ("<key>",), depth + 1)
                if not isinstance(key, str | int | float | bool) or key is None:
                    self.problems.append(Problem(self.loaded.path, *_mark(key_node), "mapping keys must be scalars"))
                    continue
                if key in first_seen:
                    line, _ = first_seen[key]
                    self.problems.append(Problem(self.loaded.path, *_mark(key_node),
                                                 f"duplicate key '{key}' (first defined on line {line})"))
                    continue
                first_seen[key] = _mark(key_node)
                self.loaded.key_positions[loc + (key,)] = _mark(key_node)
                out[key] = self.build(value_node, loc + (key,), depth + 1)
            self.loaded.positions.pop(loc + ("<key>",), None)
            return out
        raise SpecError([Problem(self.loaded.path, *_mark(node), f"unsupported YAML node {type(node).__name__}")])


def _decode(path: str, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError([Problem(path, line, col, f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x})")]) from None
    return text.removeprefix("\ufeff")


_OPEN = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
         yaml.BlockMappingStartToken)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _check_depth(text: str, path: str) -> None:
    """Refuse deep nesting with the (iterative) scanner, before the (recursive) composer can blow the stack."""
    depth = 0
    for token in yaml.scan(text, Loader=_FAST_LOADER):
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError([Problem(path, *_mark(token), f"nesting deeper than {MAX_DEPTH} levels; refused")])
        elif isinstance(token, _CLOSE):
            depth -= 1


def load_yaml_text(text: str, path: str) -> Loaded:
    loaded = Loaded(path=path, data=None)
    try:
        _check_depth(text, path)
        node = yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError([Problem(path, line, col, f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(path, 1, 1, f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SpecError([Problem(path, 1, 1, f"nesting deeper than {MAX_DEPTH} levels; refused")]) from None
    if node is None:
        loaded.data = {}
        return loaded
    builder = _Builder(loaded)
    loaded.data = builder.build(node, (), 0)
    if builder.problems:
        raise SpecError(builder.problems)
    return loaded


def _display(path: Path) -> str:
    """Paths in messages are relative to the working directory when they lie under it, as users typed them."""
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def load_yaml(path: str | os.PathLike[str]) -> Loaded:
    """Read a YAML file with size, encoding, nesting and alias-expansion limits."""
    shown = _display(Path(path))
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise SpecError([Problem(shown, 1, 1, f"cannot read file: {exc.strerror}")]) from None
    if size > MAX_BYTES:
        raise SpecError([Problem(shown, 1, 1, f"file is {size} bytes; spec files are limited to {MAX_BYTES} bytes")])
    with p.open("rb") as fh:
        raw = fh.read(MAX_BYTES + 1)
    return load_yaml_text(_decode(shown, raw), shown)
