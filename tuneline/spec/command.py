"""The command-template grammar, parsed once when a component loads: every reader of a command uses these tokens.

A component's `command` is Azure ML's placeholder syntax: `${{inputs.x}}` and `${{outputs.y}}` inside words, and
`$[[ ... ]]` around the words that need an optional input (kept only when every input inside is bound). Words are
split as a POSIX shell splits them (`shlex`), and a block must stand between whole words. The loader checks a
command with it (tuneline.spec.load), the local runner renders it (tuneline.step.command), the argument builder
reads each input's `--flag` from it (tuneline.step.args), and the compilers turn the tokens into their platform's
placeholders (tuneline.targets).
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.([a-zA-Z0-9_]+)\s*\}\}")
OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.S)


class CommandError(ValueError):
    """A command template the grammar cannot read; the message quotes the place."""


@dataclass(frozen=True)
class Ref:
    kind: str   # "inputs" or "outputs"
    name: str


Part = str | Ref
Token = tuple[Part, ...]  # one argv element: text and references concatenated


@dataclass(frozen=True)
class OptionalBlock:
    inputs: tuple[str, ...]  # the block is kept only when all of these are bound
    tokens: tuple[Token, ...]


Item = Token | OptionalBlock


def _tokens(text: str) -> list[Token]:
    out: list[Token] = []
    for word in shlex.split(text):
        parts: list[Part] = []
        last = 0
        for match in PLACEHOLDER.finditer(word):
            if match.start() > last:
                parts.append(word[last:match.start()])
            parts.append(Ref(match.group(1), match.group(2)))
            last = match.end()
        if last < len(word):
            parts.append(word[last:])
        out.append(tuple(parts))
    return out


@functools.cache
def parse_command(template: str) -> tuple[Item, ...]:
    """Tokens of `template` in order; raises CommandError when a block does not stand between whole words or a
    quote is left open. Parsed once per template (the result is immutable), however many readers ask."""
    items: list[Item] = []
    last = 0
    try:
        for match in OPTIONAL_BLOCK.finditer(template):
            before, after = template[last:match.start()], template[match.end():match.end() + 1]
            if (before and not before[-1].isspace()) or (after and not after.isspace()):
                raise CommandError(f"a $[[...]] block must be separated by spaces from its neighbours: "
                                   f"'{template[max(0, match.start() - 20):match.end() + 20]}'")
            items.extend(_tokens(before))
            block = _tokens(match.group(1))
            names = tuple(dict.fromkeys(p.name for t in block for p in t if isinstance(p, Ref) and p.kind == "inputs"))
            items.append(OptionalBlock(names, tuple(block)))
            last = match.end()
        items.extend(_tokens(template[last:]))
    except ValueError as err:  # shlex: "No closing quotation"
        if isinstance(err, CommandError):
            raise
        raise CommandError(f"the command cannot be split into words: {err}") from None
    return tuple(items)


def flat_tokens(items: tuple[Item, ...] | list[Item]) -> list[Token]:
    """Every token, optional blocks' included, in order."""
    out: list[Token] = []
    for item in items:
        out.extend(item.tokens if isinstance(item, OptionalBlock) else [item])
    return out


def references(items: tuple[Item, ...] | list[Item]) -> list[Ref]:
    return [part for token in flat_tokens(items) for part in token if isinstance(part, Ref)]


def block_inputs(items: tuple[Item, ...] | list[Item]) -> set[str]:
    """The inputs that appear inside an optional block."""
    return {name for item in items if isinstance(item, OptionalBlock) for name in item.inputs}


def flags(items: tuple[Item, ...] | list[Item]) -> dict[tuple[str, str], str]:
    """(inputs|outputs, name) -> the `--flag` word written right before a word that is just its reference."""
    found: dict[tuple[str, str], str] = {}
    tokens = flat_tokens(items)
    for previous, token in zip(tokens, tokens[1:], strict=False):
        if (len(token) == 1 and isinstance(token[0], Ref) and len(previous) == 1 and isinstance(previous[0], str)
                and previous[0].startswith("--")):
            found.setdefault((token[0].kind, token[0].name), previous[0])
    return found


def leading_words(items: tuple[Item, ...] | list[Item]) -> list[str]:
    """The plain words a command starts with (`python -m components.train`), up to the first reference."""
    words = []
    for item in items:
        if isinstance(item, OptionalBlock) or any(isinstance(p, Ref) for p in item) or len(item) != 1:
            break
        words.append(item[0])
    return words


def render(items: tuple[Item, ...] | list[Item], value: Callable[[Ref], Any | None],
           text: Callable[[Any], str] = str) -> list[str]:
    """The argv: each block kept when `value` binds every input in it, each reference replaced by `text` of its
    value. `value` returns None for an unbound input; a kept reference to one raises KeyError."""
    argv = []
    for item in items:
        if isinstance(item, OptionalBlock):
            if any(value(Ref("inputs", name)) is None for name in item.inputs):
                continue
            tokens = list(item.tokens)
        else:
            tokens = [item]
        for token in tokens:
            word = []
            for part in token:
                if isinstance(part, Ref):
                    bound = value(part)
                    if bound is None:
                        raise KeyError(f"command needs {part.kind[:-1]} '{part.name}' but it has no value")
                    word.append(text(bound))
                else:
                    word.append(part)
            argv.append("".join(word))
    return argv
