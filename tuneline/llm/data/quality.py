"""Quality rules that catch records which parse but would teach the model something wrong.

Each rule is a quarantine reason, on by default, with its threshold in ``QualityRules``:

* ``no_user_turn``: an assistant turn with no user turn before it (a system prompt answered by itself).
* ``empty_answer``: an assistant turn with fewer than ``min_answer_chars`` letters or digits after
  normalisation ("...", "-", an invisible character).
* ``degenerate_repetition``: an assistant turn that repeats itself, measured with the repetition rules of
  Gopher (Rae et al. 2021, "Scaling Language Models", Table A1), at the thresholds that datatrove's
  ``GopherRepetitionFilter`` uses by default:
    - duplicate n-gram character fraction > 0.15, 0.14, 0.13, 0.12, 0.11, 0.10 for n = 5..10: the characters
      of n-grams that already occurred (scanning left to right, jumping past a repeat), over the characters
      of the text;
    - top n-gram character fraction > 0.20, 0.18, 0.16 for n = 2..4: the characters of the most frequent
      n-gram times its count, over the characters of the text.
  ``max_repetition`` is the 5-gram threshold (default 0.15); the other thresholds keep their Gopher ratio
  to it, so 0.30 doubles every threshold and 0 turns the rule off.
  Where this differs from datatrove, and why: words are whitespace-separated tokens (no NLTK tokenizer);
  the top n-gram rules apply from ``TOP_NGRAM_MIN_WORDS`` (50) words, Gopher's minimum document length
  (on a one-line answer a single 2-gram exceeds 20 % of the text by itself); the line and paragraph
  duplicate fractions are not used, because code answers legitimately repeat lines such as "}".
  (datatrove's ``find_all_duplicate`` is passed the n-gram list rather than the words; this follows the
  Gopher definition over words.)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# (n, threshold) from Gopher Table A1 / datatrove GopherRepetitionFilter defaults.
GOPHER_TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
GOPHER_DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
GOPHER_BASE = 0.15
TOP_NGRAM_MIN_WORDS = 50


@dataclass(frozen=True, slots=True)
class QualityRules:
    require_user_turn: bool = True
    min_answer_chars: int = 1
    max_repetition: float = GOPHER_BASE


def answer_chars(text: str) -> int:
    """Letters and digits in ``text`` (what is left of an answer once punctuation and space are gone)."""
    return sum(1 for ch in text if ch.isalnum())


def has_answer_chars(text: str, minimum: int) -> bool:
    """``answer_chars(text) >= minimum``, stopping at the ``minimum``-th letter or digit."""
    if minimum <= 0:
        return True
    found = 0
    for ch in text:
        if ch.isalnum():
            found += 1
            if found >= minimum:
                return True
    return False


def _ngrams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _duplicate_chars(words: list[str], n: int) -> int:
    seen: set[str] = set()
    repeated, i = 0, 0
    while i <= len(words) - n:
        gram = " ".join(words[i : i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


def repetition(text: str, max_repetition: float = GOPHER_BASE) -> tuple[str, float, float] | None:
    """The first Gopher repetition rule ``text`` breaks, as (rule, measured fraction, threshold), or None."""
    if max_repetition <= 0 or not text:
        return None
    words = text.split()
    scale = max_repetition / GOPHER_BASE
    total = len(text)
    for n, base in GOPHER_DUP_NGRAMS:
        if len(words) < 2 * n:
            break
        fraction = _duplicate_chars(words, n) / total
        if fraction > base * scale:
            return f"duplicate {n}-gram character fraction", fraction, base * scale
    if len(words) < TOP_NGRAM_MIN_WORDS:
        return None
    for n, base in GOPHER_TOP_NGRAMS:
        gram, count = Counter(_ngrams(words, n)).most_common(1)[0]
        fraction = len(gram) * count / total
        if fraction > base * scale:
            return f"top {n}-gram character fraction ({gram!r} x{count})", fraction, base * scale
    return None
