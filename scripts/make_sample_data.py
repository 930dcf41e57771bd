"""Generate the demo dataset: customer-support tickets -> a compact JSON triage label.

Run as: python scripts/make_sample_data.py            # writes data/sample/tickets.jsonl + tickets.schema.json
        python scripts/make_sample_data.py --check    # exit 1 if the committed files differ from a fresh run

The task suits a before/after demo: a 135M instruct model rarely produces the exact JSON with the right
labels out of the box, while the labels follow learnable cues (the category from what the customer
asks, the priority from urgency wording, the product from the device named), so a short LoRA run on CPU
learns them. Tickets are 1-3 sentences and answers about 20 tokens so training stays fast.

Deterministic: a fixed seed and Python's ``random.Random`` (stable across versions for these calls).
A handful of deliberately bad lines follows the clean records so the prepare step's quarantine has
something to show: broken JSON, empty content, a missing assistant turn, an unknown role, an exact
duplicate, a near-duplicate and a blank line; some tickets carry PII (emails, phones, a card number, an
IP address) for the redactor.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "data" / "sample"
SEED = 20240611
N_CLEAN = 500

CATEGORIES = ("billing", "technical", "account", "shipping", "returns", "feedback")
PRIORITIES = ("low", "medium", "high")
PRODUCTS = {
    "router": ("my AirLink router", "the AirLink router", "our AirLink X2 router", "the wifi router"),
    "laptop": ("my NovaBook laptop", "the NovaBook Pro", "my new laptop", "the NovaBook"),
    "phone": ("my Pulse phone", "the Pulse 12 phone", "my phone", "the Pulse smartphone"),
    "headphones": ("my EchoBuds headphones", "the EchoBuds", "my wireless headphones", "the EchoBuds Max"),
    "smartwatch": ("my Orbit watch", "the Orbit smartwatch", "my smartwatch", "the Orbit 3 watch"),
    "tablet": ("my Slate tablet", "the Slate 10 tablet", "my tablet", "the Slate Mini"),
}

SYSTEM = (
    "You triage customer support tickets. Reply with only a JSON object with keys category "
    f"({', '.join(CATEGORIES)}), priority (low, medium, high) and product "
    f"({', '.join(PRODUCTS)}). Priority is high for outages, security issues, double charges or "
    "anything blocking work; low for questions and feedback; medium otherwise."
)

TEMPLATES = {
    "billing": (
        "I was billed for {p} but the invoice shows the wrong amount.",
        "Why does my statement list a charge for {p} that I never ordered?",
        "The payment for {p} failed even though my card is valid.",
        "I need a corrected invoice for {p} for my company.",
    ),
    "technical": (
        "{P} keeps disconnecting every few minutes.",
        "{P} will not turn on after the latest update.",
        "{P} is very slow and the screen freezes.",
        "The battery on {p} drains in two hours.",
    ),
    "account": (
        "I cannot log in to the account linked to {p}.",
        "Please change the email address on my account for {p}.",
        "My password reset link for {p} never arrives.",
        "How do I add a second user to {p}?",
    ),
    "shipping": (
        "{P} was supposed to arrive last week and tracking has not moved.",
        "The box with {p} arrived damaged.",
        "I ordered {p} but received a different item.",
        "Can you ship {p} to a different address?",
    ),
    "returns": (
        "I want to return {p}, it does not fit my needs.",
        "How do I send back {p} for a refund?",
        "{P} is still under warranty, can I get a replacement?",
        "The refund for {p} I returned has not appeared yet.",
    ),
    "feedback": (
        "Just wanted to say {p} works great.",
        "A suggestion: {p} would be better with a dark mode.",
        "The setup guide for {p} was confusing in step three.",
        "I love {p}, but the charger cable is too short.",
    ),
}

HIGH = (
    "This is urgent, our whole office is blocked.",
    "I was charged twice for it!",
    "Someone else logged into my account yesterday.",
    "We have a complete outage right now.",
    "I cannot work at all until this is fixed.",
)
MEDIUM = (
    "Please look into it this week.",
    "Could you help me with this?",
    "Thanks in advance.",
    "It has happened three times now.",
    "",
)
LOW = ("No rush, just curious.", "Whenever you have time.", "Just a quick question.", "Not important.")

PII = (
    "You can reach me at {first}.{last}@example.com.",
    "Call me back on +1 415-555-{n:04d}.",
    "My card ending 4242 4242 4242 4242 was used.",
    "The router admin page is at 192.168.{a}.1.",
    "My number is (212) 555-{n:04d}.",
)
FIRST = ("maria", "li", "tom", "aisha", "jonas", "priya", "kenji", "sara")
LAST = ("lopez", "wang", "becker", "khan", "smith", "patel", "sato", "novak")


def _priority(category: str, rng: random.Random) -> tuple[str, str]:
    # Feedback is low by rule; other categories draw an urgency cue, which decides the label.
    if category == "feedback":
        return "low", rng.choice(LOW + ("",))
    level = rng.choices(PRIORITIES, weights=(2, 5, 3))[0]
    cue = {"low": LOW, "medium": MEDIUM, "high": HIGH}[level]
    return level, rng.choice(cue)


def make_record(i: int, rng: random.Random) -> dict:
    category = rng.choice(CATEGORIES)
    product = rng.choice(list(PRODUCTS))
    phrase = rng.choice(PRODUCTS[product])
    ticket = rng.choice(TEMPLATES[category]).format(p=phrase, P=phrase[0].upper() + phrase[1:])
    priority, cue = _priority(category, rng)
    if cue:
        ticket = f"{ticket} {cue}"
    if rng.random() < 0.08:
        ticket += " " + rng.choice(PII).format(
            first=rng.choice(FIRST), last=rng.choice(LAST), n=rng.randrange(10_000), a=rng.randrange(256)
        )
    answer = json.dumps(
        {"category": category, "priority": priority, "product": product}, separators=(", ", ": ")
    )
    return {
        "id": f"t{i:04d}",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": ticket},
            {"role": "assistant", "content": answer},
        ],
    }


def _bad_lines(records: list[dict]) -> list[str]:
    dup = json.dumps(records[10])
    near = json.loads(json.dumps(records[20]))
    near["id"] = "t9001"
    near["messages"][1]["content"] = "  " + near["messages"][1]["content"].upper() + "  "
    empty = {
        "id": "t9002",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "   "},
            {"role": "assistant", "content": "{}"},
        ],
    }
    no_answer = {"id": "t9003", "messages": [{"role": "user", "content": "Is anyone there?"}]}
    bad_role = {
        "id": "t9004",
        "messages": [{"role": "agent", "content": "Hello"}, {"role": "assistant", "content": "{}"}],
    }
    prompt_style = {
        "id": "t9005",
        "prompt": "My Slate tablet screen cracked on arrival. Please look into it.",
        "completion": json.dumps(
            {"category": "shipping", "priority": "medium", "product": "tablet"}, separators=(", ", ": ")
        ),
    }
    return [
        '{"id": "t9000", "messages": [{"role": "user", "content": "truncated',  # broken JSON
        dup,
        json.dumps(near),
        json.dumps(empty),
        "",
        json.dumps(no_answer),
        json.dumps(bad_role),
        json.dumps(prompt_style),
    ]


def answer_schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "tickets.schema.json",
        "title": "Support ticket triage answer",
        "type": "object",
        "properties": {
            "category": {"enum": list(CATEGORIES)},
            "priority": {"enum": list(PRIORITIES)},
            "product": {"enum": list(PRODUCTS)},
        },
        "required": ["category", "priority", "product"],
        "additionalProperties": False,
    }


def render() -> dict[str, str]:
    rng = random.Random(SEED)
    records: list[dict] = []
    seen: set[str] = set()
    while len(records) < N_CLEAN:
        # Redraw repeated tickets: the only duplicates in the file should be the deliberate ones.
        record = make_record(len(records), rng)
        if record["messages"][1]["content"] not in seen:
            seen.add(record["messages"][1]["content"])
            records.append(record)
    lines = [json.dumps(r) for r in records]
    bad = _bad_lines(records)
    # Interleave the bad lines so they are not all at the end of the file.
    for k, line in enumerate(bad):
        lines.insert(40 + 55 * k, line)
    return {
        "tickets.jsonl": "\n".join(lines) + "\n",
        "tickets.schema.json": json.dumps(answer_schema(), indent=2) + "\n",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="folder to write the files to")
    p.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = p.parse_args()
    files = render()
    if args.check:
        stale = [
            n
            for n, text in files.items()
            if not (args.out_dir / n).is_file() or (args.out_dir / n).read_text(encoding="utf-8") != text
        ]
        if stale:
            print(
                f"out of date: {', '.join(stale)}; run: python scripts/make_sample_data.py", file=sys.stderr
            )
            return 1
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out_dir / name} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
