"""Generate the demo preference dataset: support tickets with the right triage JSON chosen over a near miss.

Run as: python scripts/make_preference_data.py            # writes data/sample/tickets-preference.jsonl
        python scripts/make_preference_data.py --check    # exit 1 if the committed file differs from a fresh run

Tickets come from the same generator as the SFT demo data (scripts/make_sample_data.py), drawn with another
seed; a ticket whose text is in tickets.jsonl is redrawn, so no preference prompt was an SFT example. Each record
is a TRL conversational pair: the system prompt and ticket as the prompt, the correct JSON as chosen, and as
rejected the same JSON with one field wrong (the priority in half the records, else the category or product):
the kind of near miss a tuned model still makes, which a preference step should learn to rank below the answer.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_data import CATEGORIES, OUT_DIR, PRIORITIES, PRODUCTS, make_record  # noqa: E402

SEED = 20261204
N_PAIRS = 400
NAME = "tickets-preference.jsonl"


def _near_miss(answer: dict, rng: random.Random) -> dict:
    wrong = dict(answer)
    field = "priority" if rng.random() < 0.5 else rng.choice(("category", "product"))
    choices = {"priority": PRIORITIES, "category": CATEGORIES, "product": tuple(PRODUCTS)}[field]
    wrong[field] = rng.choice([c for c in choices if c != answer[field]])
    return wrong


def render(sft_tickets: set[str]) -> str:
    rng = random.Random(SEED)
    lines, seen = [], set(sft_tickets)
    while len(lines) < N_PAIRS:
        record = make_record(len(lines), rng)
        prompt, answer = record["messages"][:2], record["messages"][2]["content"]
        if prompt[1]["content"] in seen:
            continue
        seen.add(prompt[1]["content"])
        wrong = json.dumps(_near_miss(json.loads(answer), rng), separators=(", ", ": "))
        lines.append(json.dumps({"id": f"p{len(lines):04d}", "prompt": prompt,
                                 "chosen": [{"role": "assistant", "content": answer}],
                                 "rejected": [{"role": "assistant", "content": wrong}]}))
    return "\n".join(lines) + "\n"


def _sft_tickets(out_dir: Path) -> set[str]:
    tickets = set()
    for line in (out_dir / "tickets.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError):
            continue  # the SFT file's deliberately broken lines
        tickets.update(m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "user")
    return tickets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="folder holding tickets.jsonl; written to")
    p.add_argument("--check", action="store_true", help="compare with the file on disk instead of writing")
    args = p.parse_args()
    text = render(_sft_tickets(args.out_dir))
    path = args.out_dir / NAME
    if args.check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"out of date: {NAME}; run: python scripts/make_preference_data.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
