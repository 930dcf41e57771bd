"""The feedback loop's export: rated interactions from the endpoint's request log as training data.

Run as: tuneline feedback rate REQUEST_ID 2 [--comment TEXT] [--correction "the right answer"]
        tuneline feedback export --min-rating 4 --out data/feedback.jsonl            (chat records for SFT)
        tuneline feedback export --kind pairs [--min-gap 1] --out data/pairs.jsonl   (preference pairs, DPO)
        tuneline feedback export --kind kto [--min-rating 4 --max-bad-rating 2] --out data/kto.jsonl

The log and the ratings are the endpoint's (``tuneline.serving.requestlog``). ``export`` joins the two and writes
JSONL the prepare step reads, of one kind: ``sft`` chat records (rating >= ``min_rating``), ``pairs`` (TRL's
conversational preference pairs: two answers to the same conversation rated apart, or a correction against the
answer it corrects; ``_pairs`` says which pair a conversation gives) or ``kto`` (TRL's unpaired preference
records, labelled by rating; a correction is one more desirable record and makes the answer it corrects
undesirable; ``sft`` leaves a corrected answer out, whatever its rating). A served answer is only ever the
server's own logged answer, for a conversation the server can vouch for: a logged request whose messages carry
client-written assistant turns is dropped (those turns could be anything), client system turns give way to the
export's ``system``, and ``ExportResult.dropped`` counts every dropped answer or correction by reason, in every
kind. The file is replaced whole (written beside it, then renamed), 0600.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.llm.data.normalize import normalize_text
from tuneline.serving.requestlog import FeedbackError, LoggedRequest, Rating, RatingStore, read_requests

KINDS = ("sft", "pairs", "kto")


@dataclass(frozen=True)
class ExportResult:
    written: int
    rated: int
    logged: int
    unmatched_ratings: int  # usable ratings whose request is no longer in the (rotated) log
    dropped: dict[str, int] = field(default_factory=dict)  # answers and corrections not written, by reason
    kind: str = "sft"
    written_by: dict[str, int] = field(default_factory=dict)  # pairs: by source; kto: by label


@dataclass(frozen=True)
class _Rated:
    """A logged request that passed the rules every kind shares, with its rating and its exported prompt."""

    request: LoggedRequest
    rating: Rating
    prompt: list[dict[str, str]]
    order: int  # its place among these, in log order: ties are broken by it

    @property
    def answer(self) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": self.request.response}]


def export(
    log_path: Path | str,
    ratings_path: Path | str,
    out: Path | str,
    min_rating: int = 4,
    system: str | None = None,
    *,
    kind: str = "sft",
    max_bad_rating: int = 2,
    min_gap: int = 1,
) -> ExportResult:
    """Write rated interactions as training records of ``kind``:

    - ``sft``: chat JSONL (id, messages, rating, source, model) of those rated >= ``min_rating``;
    - ``pairs``: TRL conversational preference pairs (``_pairs``);
    - ``kto``: TRL unpaired preference records, desirable when rated >= ``min_rating``, undesirable when
      rated <= ``max_bad_rating`` (``_kto``).

    The conversation is the server's log of it, and an answer the one it served (or a rater's correction of
    it); see the module docstring for what is dropped and why."""
    _check_options(kind, min_rating, max_bad_rating, min_gap)
    ratings = RatingStore(ratings_path).entries()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logged = 0
    seen: set[str] = set()
    logged_ids: set[str] = set()
    dropped: Counter[str] = Counter()
    rated: list[_Rated] = []
    for request in read_requests(log_path):
        logged += 1
        logged_ids.add(request.id)
        rating = ratings.get(request.id)
        reason = _drop_reason(request, rating, min_rating if kind == "sft" else None, seen)
        if reason:
            dropped[reason] += 1
            continue
        assert rating is not None
        seen.add(request.id)
        rated.append(_Rated(request, rating, _prompt(request, system), len(rated)))
    if kind == "sft":
        # An answer its rater corrected is not one to imitate, whatever the rating it was given.
        corrected = [r for r in rated
                     if r.rating.correction and not _same_text(r.rating.correction, r.request.response)]
        if corrected:
            dropped["corrected by its rater"] += len(corrected)
        records = [_sft_record(r) for r in rated if r not in corrected]
    elif kind == "pairs":
        records = _pairs(rated, min_gap, dropped)
    else:
        records = _kto(rated, min_rating, max_bad_rating, dropped)
    _write_atomic(out, records)
    unmatched = sum(1 for rid, r in ratings.items()
                    if rid not in logged_ids and _usable(r, kind, min_rating, max_bad_rating))
    by: Counter[str] = Counter()
    if kind == "pairs":
        by.update(r["pair"] for r in records)
    elif kind == "kto":
        by.update("desirable" if r["label"] else "undesirable" for r in records)
    return ExportResult(written=len(records), rated=len(ratings), logged=logged, unmatched_ratings=unmatched,
                        dropped=dict(sorted(dropped.items())), kind=kind, written_by=dict(sorted(by.items())))


def _check_options(kind: str, min_rating: int, max_bad_rating: int, min_gap: int) -> None:
    if kind not in KINDS:
        raise FeedbackError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 1 <= min_rating <= 5:
        raise FeedbackError(f"--min-rating must be 1-5, got {min_rating}")
    if kind == "kto" and not 1 <= max_bad_rating < min_rating:
        raise FeedbackError(f"--max-bad-rating must be from 1 to below --min-rating ({min_rating}), got "
                            f"{max_bad_rating}: a rating cannot be both good and bad")
    if kind == "pairs" and not 1 <= min_gap <= 4:
        raise FeedbackError(f"--min-gap must be 1-4, got {min_gap}")


def _usable(rating: Rating, kind: str, min_rating: int, max_bad_rating: int) -> bool:
    """Whether a rating would have made a record had its request still been in the log."""
    if kind == "sft":
        return rating.rating >= min_rating
    if kind == "kto":
        return bool(rating.correction) or not max_bad_rating < rating.rating < min_rating
    return True  # any rating can pair with another answer's


def _drop_reason(request: LoggedRequest, rating: Rating | None, min_rating: int | None, seen: set[str]) -> str:
    """The rules every kind shares (and, for sft, its threshold), in the order they are counted."""
    if rating is None:
        return "not rated"
    if min_rating is not None and rating.rating < min_rating:
        return f"rated below {min_rating}"
    if request.id in seen:
        return "logged twice"
    if not request.response.strip():
        return "empty answer"
    if rating.by and rating.by != request.by:
        return "rated by another token than the one that made the request"
    if any(m["role"] == "assistant" for m in request.messages):
        return "client-written assistant turns in the conversation"
    return ""


def _prompt(request: LoggedRequest, system: str | None) -> list[dict[str, str]]:
    messages = list(request.messages)
    if request.by:
        # Served by the endpoint: client system turns are instructions the server never vouched for.
        messages = [m for m in messages if m["role"] != "system"]
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _same_text(a: str, b: str) -> bool:
    """Equal as prepare compares two sides (``chosen_equals_rejected``): after its text normalisation."""
    return normalize_text(a) == normalize_text(b)


def _sft_record(r: _Rated) -> dict[str, Any]:
    return {
        "id": f"feedback-{r.request.id}",
        "messages": [*r.prompt, *r.answer],
        "rating": r.rating.rating,
        "source": "feedback",
        "model": r.request.model,
    }


def _pairs(rated: list[_Rated], min_gap: int, dropped: Counter[str]) -> list[dict[str, Any]]:
    """One preference pair per conversation (prepare keeps one pair per prompt and would drop the rest).

    Answers belong to one conversation when their exported prompts are the same text after prepare's
    normalisation. Its pair is, in this order of preference:

    1. a correction: chosen = the rater's correction, rejected = the answer it corrected (the newest
       correction when several were given), whatever the rating: a rater who wrote the right answer has said
       more than any rating says;
    2. best against worst: chosen = the highest-rated answer, rejected = the lowest-rated one whose text
       differs from it and whose rating is at least ``min_gap`` lower (ties: the newest answer).

    Every answer of the conversation left out of its pair is counted in ``dropped`` by reason, as is every
    correction equal to the answer it corrects."""
    groups: dict[str, list[_Rated]] = {}
    for r in rated:
        key = json.dumps([[m["role"], normalize_text(m["content"])] for m in r.prompt], ensure_ascii=False)
        groups.setdefault(key, []).append(r)
    records: list[dict[str, Any]] = []
    for members in groups.values():
        corrected = []
        for r in members:
            if r.rating.correction and _same_text(r.rating.correction, r.request.response):
                dropped["correction equals the served answer"] += 1
            elif r.rating.correction:
                corrected.append(r)
        if corrected:
            r = corrected[-1]
            records.append({
                "id": f"feedback-{r.request.id}-corrected",
                "prompt": r.prompt,
                "chosen": [{"role": "assistant", "content": r.rating.correction}],
                "rejected": r.answer,
                "source": "feedback",
                "pair": "correction",
                "rating": {"rejected": r.rating.rating},
                "model": {"rejected": r.request.model},
            })
            used = {r.order}
        else:
            best = max(members, key=lambda m: (m.rating.rating, m.order))
            worse = [m for m in members if m.rating.rating <= best.rating.rating - min_gap
                     and not _same_text(m.request.response, best.request.response)]
            if not worse:
                if len(members) == 1:
                    reason = "no other answer to the same conversation to pair with"
                elif all(m.rating.rating > best.rating.rating - min_gap for m in members):
                    reason = f"answers to the same conversation rated less than {min_gap} apart"
                else:
                    reason = "answers to the same conversation rated apart have the same text"
                dropped[reason] += len(members)
                continue
            worst = min(worse, key=lambda m: (m.rating.rating, -m.order))
            records.append({
                "id": f"feedback-{best.request.id}-over-{worst.request.id}",
                "prompt": best.prompt,
                "chosen": best.answer,
                "rejected": worst.answer,
                "source": "feedback",
                "pair": "ratings",
                "rating": {"chosen": best.rating.rating, "rejected": worst.rating.rating},
                "model": {"chosen": best.request.model, "rejected": worst.request.model},
            })
            used = {best.order, worst.order}
        left = sum(1 for m in members if m.order not in used)
        if left:
            dropped["one pair per conversation: another answer to it was paired"] += left
    return records


def _kto(rated: list[_Rated], min_rating: int, max_bad_rating: int, dropped: Counter[str]) -> list[dict[str, Any]]:
    """An answer rated >= ``min_rating`` is desirable, <= ``max_bad_rating`` undesirable; one between is
    dropped (it says neither). A correction is one more desirable record, whatever the rating, and the answer
    it corrects is undesirable whatever its rating: the rater wrote what the answer should have been, as the
    pairs export (correction over the served answer) and the ratings trigger (a corrected answer is a loss)
    read it."""
    records: list[dict[str, Any]] = []
    for r in rated:
        base = {"source": "feedback", "rating": r.rating.rating, "model": r.request.model}
        corrected = bool(r.rating.correction) and not _same_text(r.rating.correction, r.request.response)
        if corrected or r.rating.rating >= min_rating or r.rating.rating <= max_bad_rating:
            records.append({"id": f"feedback-{r.request.id}", "prompt": r.prompt, "completion": r.answer,
                            "label": not corrected and r.rating.rating >= min_rating, **base})
        else:
            dropped[f"rated above {max_bad_rating} and below {min_rating}: neither good nor bad"] += 1
        if r.rating.correction and not corrected:
            dropped["correction equals the served answer"] += 1
        elif corrected:
            records.append({"id": f"feedback-{r.request.id}-corrected", "prompt": r.prompt,
                            "completion": [{"role": "assistant", "content": r.rating.correction}],
                            "label": True, **base, "corrected": True})
    return records


def _write_atomic(out: Path, records: list[dict[str, Any]]) -> None:
    """The whole file or the old one: written beside it, 0600 (it holds what users typed), then renamed."""
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a killed export may carry other permissions
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
