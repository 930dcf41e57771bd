"""Render a component's command into the argv a step runs: the template's tokens (tuneline.spec.command, parsed
when the component loaded) with each reference replaced by its value and each optional block kept only when its
inputs are bound. The same template becomes a KFP container command and an Azure ML command component without
translation.
"""

from __future__ import annotations

from typing import Any

from tuneline.spec.command import Item, parse_command, render


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_items(items: tuple[Item, ...] | list[Item], inputs: dict[str, Any], outputs: dict[str, str]) -> list[str]:
    """`inputs` holds bound values/paths (None or absent when unbound); `outputs` holds output paths."""
    return render(items, lambda ref: (inputs if ref.kind == "inputs" else outputs).get(ref.name), format_value)


def render_command(template: str, inputs: dict[str, Any], outputs: dict[str, str]) -> list[str]:
    """`render_items` of a template given as text (a pod's launcher gets the command that way)."""
    return render_items(parse_command(template), inputs, outputs)
