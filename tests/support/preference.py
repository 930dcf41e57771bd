"""Small synthetic preference splits for tests: support tickets with the right JSON answer chosen and a wrong one
rejected (pairs), or each answer labelled (KTO). Written in the layout prepare produces for preference data."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.support.tickets import ticket_records


def _wrong(answer: str, rng: random.Random, flaw: str) -> str:
    fields = json.loads(answer)
    if flaw == "invalid":  # a value outside the schema, wrong whatever the ticket says; as long as the right one
        fields["priority"] = fields["priority"][::-1]  # so that length alone does not rank the two
        return json.dumps(fields, separators=(",", ":"))
    fields["priority"] = "low" if fields["priority"] == "high" else "high"
    if rng.random() < 0.5:
        fields["category"] = {"billing": "bug", "bug": "account", "account": "billing"}[fields["category"]]
    return json.dumps(fields, separators=(",", ":"))


def preference_records(n: int, kind: str = "pairs", seed: int = 0, flaw: str = "near_miss") -> list[dict]:
    """``flaw``: "near_miss" (the rejected answer mislabels the ticket) or "invalid" (it breaks the schema)."""
    rng = random.Random(seed + 1)
    out = []
    for r in ticket_records(n, seed):
        prompt, answer = r["messages"][:-1], r["messages"][-1]["content"]
        chosen = [{"role": "assistant", "content": answer}]
        rejected = [{"role": "assistant", "content": _wrong(answer, rng, flaw)}]
        if kind == "pairs":
            out.append({"id": r["id"], "prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:
            good = rng.random() < 0.5
            out.append({"id": r["id"], "prompt": prompt, "completion": chosen if good else rejected, "label": good})
    return out


def write_preference_splits(root: Path | str, kind: str = "pairs", n_train: int = 16, n_validation: int = 8,
                            n_test: int = 8, seed: int = 0, flaw: str = "near_miss") -> dict[str, Path]:
    root = Path(root)
    records = preference_records(n_train + n_validation + n_test, kind, seed, flaw)
    parts = {"train": records[:n_train], "validation": records[n_train:n_train + n_validation],
             "test": records[n_train + n_validation:]}
    out = {}
    for name, rows in parts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = root / name
    return out
