"""The command of a compiled step with `resume: true` outputs: the step's own command behind the resume wrapper.

Both compilers put `python -m tuneline.step.resume` in front of such a step (see that module for the key and
the store policy). The wrapper gets the step's component folder, each `resume: true` output's path, and every
input: values as `--value name=...`, artifacts as `--artifact name=...`, so it can key the store by what the
platform actually hands the container. An optional input without a default sits in an optional block, as in the
component's own command, so it is passed only when bound.
"""

from __future__ import annotations

import os

from ..graph import Node, PipelineGraph
from ..spec.command import Item, OptionalBlock, Ref, Token
from ..step.resume import RESUME_MODULE


def component_path(graph: PipelineGraph, node: Node) -> str:
    """The component folder relative to the code root (the image's WORKDIR, Azure ML's `code:` snapshot)."""
    return os.path.relpath(node.component.folder, graph.pipeline.root)


def resume_items(graph: PipelineGraph, node: Node, in_output: bool) -> list[Item]:
    """The wrapper's words up to and including `--`; the step's command follows."""
    spec = node.component.spec
    items: list[Item] = [("python",), ("-m",), (RESUME_MODULE,), ("--component",), (component_path(graph, node),)]
    if in_output:
        items.append(("--in-output",))
    for name in spec.resume_outputs:
        items += [("--store",), (f"{name}=", Ref("outputs", name))]
    for name, declared in spec.inputs.items():
        pair: tuple[Token, ...] = (("--artifact" if declared.type.is_artifact else "--value",),
                                   (f"{name}=", Ref("inputs", name)))
        if declared.optional and declared.default is None:
            items.append(OptionalBlock((name,), pair))
        else:
            items.extend(pair)
    return items + [("--",)]
