"""Write a step's value output (a gate, a count, a model URI) the way every executor reads it back.

KFP's launcher (and `kfp.local`) takes a STRING output parameter's file verbatim and parses the other types as
JSON; Azure ML's value folders are read with `cat`; the local runner follows KFP. So a string is written as its bare
text (JSON quotes would become part of the value) and everything else as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_value(path: Path | str, value: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))
