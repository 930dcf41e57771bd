"""Split a component's command template into typed tokens that each target renders its own way.

The template is the one the local runner renders (`tuneline.step.command`): `${{inputs.x}}`, `${{outputs.y}}`
and `$[[ ... ]]` around the parts that need an optional input. KFP turns the tokens into container placeholders,
the PyTorchJob launcher renders them at run time; Azure ML reads the template text as it is.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from tuneline.spec.models import OPTIONAL_BLOCK, PLACEHOLDER

from . import CompileError


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


def parse_command(template: str) -> list[Item]:
    """Tokens of `template` in order; optional blocks must sit between whole words."""
    items: list[Item] = []
    last = 0
    for match in OPTIONAL_BLOCK.finditer(template):
        before, after = template[last:match.start()], template[match.end():match.end() + 1]
        if (before and not before[-1].isspace()) or (after and not after.isspace()):
            raise CompileError(f"a $[[...]] block must be separated by spaces from its neighbours: "
                               f"'{template[max(0, match.start() - 20):match.end() + 20]}'")
        items.extend(_tokens(before))
        block = _tokens(match.group(1))
        names = tuple(dict.fromkeys(p.name for t in block for p in t if isinstance(p, Ref) and p.kind == "inputs"))
        items.append(OptionalBlock(names, tuple(block)))
        last = match.end()
    items.extend(_tokens(template[last:]))
    return items


def flat_tokens(items: list[Item]) -> list[Token]:
    out: list[Token] = []
    for item in items:
        out.extend(item.tokens if isinstance(item, OptionalBlock) else [item])
    return out


def torchrun_prefix(argv0: list[str], nodes: int, processes_per_node: int) -> list[str]:
    """Rewrite the leading `python -m module` / `python script.py` of a command into its torchrun form.

    Only the launcher changes: every argument after it stays exactly as the local command has it.
    """
    if not argv0 or argv0[0] not in ("python", "python3"):
        raise CompileError(f"a distributed step's command must start with 'python', got '{' '.join(argv0[:2])}'")
    launcher = ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={processes_per_node}"]
    if nodes == 1:
        launcher.append("--standalone")
    return launcher


def leading_words(items: list[Item]) -> list[str]:
    """The plain words a command starts with (`python -m components.train`), up to the first reference."""
    words = []
    for item in items:
        if isinstance(item, OptionalBlock) or any(isinstance(p, Ref) for p in item) or len(item) != 1:
            break
        words.append(item[0])
    return words
