"""How a compiled multi-node step starts its processes: the command's launcher rewritten into its torchrun form.

The command itself is read with the grammar every reader shares (tuneline.spec.command); only the launcher words
in front of it change here.
"""

from __future__ import annotations

from . import CompileError


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
