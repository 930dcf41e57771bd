"""Unicode and whitespace normalisation of message text.

NFC, not NFKC: NFC only merges canonically equivalent sequences (a precomposed "é" and "e" + combining
acute are the same text), so it never changes what a reader sees. NFKC also folds *compatibility*
characters: "x²" becomes "x2", "ﬁ" becomes "fi", full-width digits become ASCII, "™" becomes "TM",
"½" becomes "1⁄2". That silently rewrites maths, code, units and CJK text that a fine-tuned model is
expected to reproduce, so it is the wrong default for training targets.

Whitespace: line endings become "\\n"; exotic spaces (NBSP, thin/ideographic spaces) become " ";
zero-width characters and C0/C1 controls other than "\\n" and "\\t" are dropped; trailing spaces at line
ends are stripped; runs of 3+ newlines shrink to one blank line; the text is stripped at both ends.
Indentation inside a line is kept because it is meaningful in code.
"""

from __future__ import annotations

import re
import unicodedata

_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\u200b-\u200d\u2060\ufeff]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
# One pre-check for all the rewrites above: most text needs none of them.
_ANY_FIX = re.compile(
    r"[\r\u2028\u2029\x85\u00a0\u1680\u2000-\u200d\u202f\u205f\u2060\u3000\ufeff"
    r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|[ \t]\n|\n\n\n"
)


def normalize_text(text: str) -> str:
    """Return ``text`` in NFC with normalised whitespace (see the module docstring)."""
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if _ANY_FIX.search(text):
        text = _NEWLINES.sub("\n", text)
        text = _ODD_SPACES.sub(" ", text)
        text = _INVISIBLE.sub("", text)
        text = _TRAILING.sub("\n", text)
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()
