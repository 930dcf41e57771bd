"""Small synthetic chat splits for tests and benchmarks (support ticket -> compact JSON).

Deterministic from a seed; written in the layout the prepare step produces: ``<root>/<split>/data.jsonl``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Classify the support ticket. Answer with JSON: category, priority."
SCHEMA = {
    "type": "object",
    "properties": {"category": {"enum": ["billing", "bug", "account"]}, "priority": {"enum": ["low", "high"]}},
    "required": ["category", "priority"],
    "additionalProperties": False,
}
_PHRASES = {
    "billing": ["I was charged twice", "my invoice is wrong", "refund my payment"],
    "bug": ["the app crashes on start", "export button does nothing", "page shows an error"],
    "account": ["I cannot log in", "reset my password", "change my email address"],
}
_URGENCY = {"low": ["when you have time", "no rush"], "high": ["urgent!", "asap, production is down"]}


def ticket_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        category = rng.choice(sorted(_PHRASES))
        priority = rng.choice(sorted(_URGENCY))
        user = f"{rng.choice(_PHRASES[category])}, {rng.choice(_URGENCY[priority])}"
        answer = json.dumps({"category": category, "priority": priority}, separators=(",", ":"))
        records.append({"id": f"t{seed}-{i}", "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]})
    return records


def write_splits(root: Path | str, n_train: int = 32, n_validation: int = 8, n_test: int = 8,
                 seed: int = 0) -> dict[str, Path]:
    root = Path(root)
    records = ticket_records(n_train + n_validation + n_test, seed)
    parts = {"train": records[:n_train], "validation": records[n_train: n_train + n_validation],
             "test": records[n_train + n_validation:]}
    out = {}
    for name, rows in parts.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = folder
    schema = root / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out["schema"] = schema
    return out
