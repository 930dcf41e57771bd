"""Render a component's command template into an argv list.

The template uses Azure ML's placeholder syntax — `${{inputs.x}}`, `${{outputs.y}}` and `$[[ ... ]]` for the
parts that only apply when an optional input is bound — so the same text becomes a KFP container command and an
Azure ML command component without translation.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from tuneline.spec.models import OPTIONAL_BLOCK, PLACEHOLDER


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_command(template: str, inputs: dict[str, Any], outputs: dict[str, str]) -> list[str]:
    """`inputs` holds bound values/paths (None or absent when unbound); `outputs` holds output paths."""

    def keep_block(match: re.Match[str]) -> str:
        names = [n for kind, n in PLACEHOLDER.findall(match.group(1)) if kind == "inputs"]
        return match.group(1) if all(inputs.get(n) is not None for n in names) else ""

    text = OPTIONAL_BLOCK.sub(keep_block, template)

    def substitute(match: re.Match[str]) -> str:
        kind, name = match.groups()
        table = inputs if kind == "inputs" else outputs
        if table.get(name) is None:
            raise KeyError(f"command needs {kind[:-1]} '{name}' but it has no value")
        return format_value(table[name])

    # Split first, substitute after: a path with spaces stays one argument.
    return [PLACEHOLDER.sub(substitute, token) for token in shlex.split(text)]
