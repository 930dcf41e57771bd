"""Generate a second demo task: short two-person dialogues -> a one-sentence summary, in chat format.

Run as: python scripts/make_dialogue_data.py          # writes data/sample/dialogues.jsonl
        python scripts/make_dialogue_data.py --check  # exit 1 if the committed file differs from a fresh run

It retargets the demo pipeline to free-text answers, where JSON field accuracy does not exist:
    tuneline run pipelines/finetune.yaml --set dataset=data/sample/dialogues.jsonl --set gate_metric=rouge_l \
        --set smoke_expect='\\w'
The dialogues follow the layout of public dialogue-summarisation sets (``#Person1#: ...`` turns, a
"Summarize the dialog" instruction) and the summaries follow learnable cues (who asks, about what, what is
agreed), so a short LoRA run raises ROUGE-L over the base model. Deterministic: a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "sample" / "dialogues.jsonl"
SEED = 7
N = 160
SYSTEM = "Summarize the dialog in one sentence."

NAMES = "Anna Ben Carla David Elena Farid Grace Hugo Iris Jonas Kemal Lena Marta Nils Olga Pavel".split()
PLANS = [
    ("go to the cinema", "the new thriller", "on {day} evening"),
    ("have lunch", "the Thai place near the office", "on {day} at noon"),
    ("play tennis", "the courts in the park", "on {day} morning"),
    ("study for the exam", "the library", "on {day} afternoon"),
    ("visit the museum", "the modern art exhibition", "on {day}"),
    ("cook dinner together", "a vegetable curry", "on {day} night"),
]
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
PROBLEMS = [
    ("the printer is jammed again", "call the technician", "fixed"),
    ("the report is due tomorrow", "split the remaining sections", "finished"),
    ("the train tickets are sold out", "take the bus instead", "booked"),
    ("the flat is too cold", "ask the landlord about the heating", "repaired"),
    ("the laptop will not start", "bring it to the repair shop", "checked"),
]


def plan_dialogue(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    activity, place, when = rng.choice(PLANS)
    day = rng.choice(DAYS)
    when = when.format(day=day)
    agree = rng.random() < 0.7
    turns = [
        f"{a}: Hi {b}, would you like to {activity} {when}?",
        f"{b}: Where were you thinking?",
        f"{a}: {place.capitalize()}, I heard it is great.",
        f"{b}: " + ("Sounds good, count me in." if agree else f"Sorry, I am busy {when}. Maybe next week?"),
    ]
    summary = (f"{a} invites {b} to {activity} {when} and {b} agrees." if agree
               else f"{a} invites {b} to {activity} {when} but {b} is busy.")
    return "\n".join(turns), summary


def problem_dialogue(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    problem, fix, done = rng.choice(PROBLEMS)
    turns = [
        f"{a}: {b}, we have a problem: {problem}.",
        f"{b}: Oh no. What do you suggest?",
        f"{a}: I think we should {fix}.",
        f"{b}: Fine, let us do that and check once it is {done}.",
    ]
    return "\n".join(turns), f"{a} tells {b} that {problem} and they agree to {fix}."


def records() -> list[dict]:
    rng = random.Random(SEED)
    out = []
    for i in range(N):
        dialogue, summary = (plan_dialogue if rng.random() < 0.6 else problem_dialogue)(rng)
        out.append({"id": f"d{i:03d}", "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Summarize the dialog.\n{dialogue}"},
            {"role": "assistant", "content": summary},
        ]})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    args = p.parse_args()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records())
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"stale: {OUT.relative_to(ROOT)}; run python scripts/make_dialogue_data.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({N} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
