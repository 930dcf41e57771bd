"""Typed PII and secret redaction: each match becomes a placeholder naming its type, e.g. ``<EMAIL>``.

Shared by the prepare component and the serving feedback logger, so it depends on nothing but ``re``
and ``ipaddress``. Detectors run in a fixed order over the text, each seeing the previous ones'
output; placeholders contain no digits, "@" or ":" so a later detector never re-matches one.

Numbers that only *look* like PII are left alone where a checksum exists: a 13-19 digit run is a card
only if it passes the Luhn check, an IBAN only if its mod-97 check gives 1, an IPv6 candidate only if
``ipaddress`` parses it. Each detector has a cheap pre-check (a substring or tiny regex) so the common
case, text with nothing to redact, costs a few string scans.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PII_TYPES", "Redactor", "luhn_ok", "iban_ok", "redact"]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    rotated = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rotated)) % 97 == 1


def _card_ok(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ipv6_ok(match: str) -> bool:
    if match.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Detector:
    name: str  # the placeholder is f"<{name}>"
    pattern: re.Pattern[str]
    precheck: Callable[[str], bool]
    validate: Callable[[str], bool] | None = None
    group: int = 0  # the capture group that is replaced (0: the whole match)
    numeric: bool = False  # only runs when the text has a number-like run (see _NUMBERISH)


def _has(*needles: str) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        for needle in needles:
            if needle in text:
                return True
        return False

    return check


def _finds(pattern: str) -> Callable[[str], bool]:
    return re.compile(pattern).search  # type: ignore[return-value]


_SECRET_NAMES = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "access_token",
    "access-token",
    "auth_token",
    "auth-token",
)


def _may_assign_secret(text: str) -> bool:
    if "=" not in text and ":" not in text:
        return False
    low = text.lower()
    for name in _SECRET_NAMES:
        if name in low:
            return True
    return False


def _always(text: str) -> bool:
    return True


# Every numeric detector (card, IBAN, SSN, IPv4, phone) needs at least 7 characters of digits and
# separators, 6 of them after a digit; one scan for that rules all of them out for most text.
_NUMBERISH = re.compile(r"\d[\d \t().+-]{5,}\d|\d\.\d{1,3}\.\d")

# Order matters: secrets and structured numbers before the looser phone pattern.
DETECTORS: tuple[Detector, ...] = (
    Detector(
        "PRIVATE_KEY",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
        _has("PRIVATE KEY-----"),
    ),
    Detector(
        "AWS_ACCESS_KEY",
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
        _has("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    Detector(
        "GITHUB_TOKEN",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
        _has("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Detector(
        "API_KEY",
        re.compile(r"(?<![\w-])(?:sk-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,})"),
        _has("sk-", "xox"),
    ),
    Detector(
        "BEARER_TOKEN", re.compile(r"\b[Bb]earer\s+([A-Za-z0-9\-._~+/]{16,}=*)"), _has("earer"), group=1
    ),
    Detector(
        "SECRET",
        re.compile(
            r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
            r"[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{6,})"
        ),
        _may_assign_secret,
        group=1,
    ),
    Detector(
        "EMAIL",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        _has("@"),
    ),
    Detector(
        "IBAN",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
        _always,
        iban_ok,
        numeric=True,
    ),
    Detector(
        "CREDIT_CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _always, _card_ok, numeric=True
    ),
    Detector(
        "SSN",
        re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
        _has("-"),
        numeric=True,
    ),
    Detector(
        "IPV4",
        re.compile(
            r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)"
        ),
        _has("."),
        numeric=True,
    ),
    Detector(
        "IPV6",
        re.compile(
            r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|"
            r"\d{1,3}(?:\.\d{1,3}){3})?(?![\w:.])"
        ),
        _finds(r":[0-9A-Fa-f]{0,4}:"),
        _ipv6_ok,
    ),
    # International numbers with a leading "+", or North-American 10-digit shapes with separators:
    # bare digit runs are too ambiguous (order numbers, timestamps) to call phone numbers.
    Detector(
        "PHONE",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
            r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
        ),
        _always,
        numeric=True,
    ),
)

PII_TYPES: tuple[str, ...] = tuple(d.name for d in DETECTORS)

class Redactor:
    """Replace PII in text with typed placeholders, counting what it replaced."""

    def __init__(self, detectors: tuple[Detector, ...] = DETECTORS) -> None:
        self.detectors = detectors
        self.counts: Counter[str] = Counter()

    def may_redact(self, text: str) -> bool:
        """False when no detector's precheck passes on ``text``, so ``redact`` would return it unchanged.
        The prechecks look for needles and number-like runs that contain no newline, so run over several texts
        joined by newlines this is False exactly when it would be False for each of them."""
        numeric = _NUMBERISH.search(text) is not None
        return any((numeric or not det.numeric) and det.precheck(text) for det in self.detectors)

    def redact(self, text: str) -> str:
        numeric = _NUMBERISH.search(text) is not None
        for det in self.detectors:
            if (det.numeric and not numeric) or not det.precheck(text):
                continue
            text = self._apply(det, text)
        return text

    def _apply(self, det: Detector, text: str) -> str:
        placeholder = f"<{det.name}>"
        hits = 0

        def replace(m: re.Match[str]) -> str:
            nonlocal hits
            value = m.group(det.group)
            if det.validate is not None and not det.validate(value):
                return m.group(0)
            hits += 1
            if det.group == 0:
                return placeholder
            start, end = m.start(det.group) - m.start(), m.end(det.group) - m.start()
            whole = m.group(0)
            return whole[:start] + placeholder + whole[end:]

        text = det.pattern.sub(replace, text)
        if hits:
            self.counts[det.name] += hits
        return text


def redact(text: str) -> tuple[str, Counter[str]]:
    """One-off convenience: the redacted text and the counts per PII type."""
    r = Redactor()
    return r.redact(text), r.counts


# ---------------------------------------------------------------------------------------------- serving logs
# What users type at a served model is less regular than a training corpus: addresses spelled out to dodge
# filters, full-width characters, numbers written without the usual separators, secrets given in words.
# These detectors run on the serving request log only (`LogRedactor`); a corpus prepared for training keeps
# `DETECTORS` as they are, so its redactions (and the data it yields) do not change. They trade some false
# positives for recall: a log line with an order number taken for a phone number loses little.

_OBF_DOT = r"(?:\.|\s+\.\s+|\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)"
_OBF_AT = r"(?:\s*@\s*|\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+)"
_LABEL = r"[A-Za-z0-9_%+-]+"

LOG_DETECTORS: tuple[Detector, ...] = (
    # "my password is hunter2", "pin was 4242": a secret given in words, not as key=value.
    Detector(
        "SECRET",
        re.compile(
            r"(?i)\b(?:password|passwd|pwd|passcode|passphrase|pin(?:\s+code)?|secret(?:\s+key)?|api\s+key)"
            r"\s+(?:is|was|would\s+be|=|:)\s*[\"']?([^\s\"',;]{3,})"
        ),
        _finds(r"(?i)\b(?:pass|pwd|pin|secret|api\s+key)"),
        group=1,
    ),
    *DETECTORS[:7],  # the structured secrets and plain e-mail addresses first, as in DETECTORS
    # "ann dot lee at example dot com", "ann.lee [at] example [dot] com", "ann.lee @ example . com"
    Detector(
        "EMAIL",
        re.compile(
            rf"(?i)(?<![\w.]){_LABEL}(?:{_OBF_DOT}{_LABEL})*{_OBF_AT}{_LABEL}(?:{_OBF_DOT}{_LABEL})*"
            rf"{_OBF_DOT}[A-Za-z]{{2,}}\b"
        ),
        _finds(r"(?i)@|\bat\b"),
    ),
    *DETECTORS[7:],
    # Cards written with dots: 4111.1111.1111.1111 (Luhn-checked like the others).
    Detector(
        "CREDIT_CARD",
        re.compile(r"(?<![\d.])\d(?:[ .-]?\d){12,18}(?![\d.])"),
        _finds(r"\d{4}\.\d{4}"),
        lambda m: _card_ok(m.replace(".", "")),
    ),
    # An SSN as "123 45 6789", or nine bare digits named as one.
    Detector(
        "SSN",
        re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3} (?!00)\d{2} (?!0000)\d{4}(?![\d-])"),
        _always,
        numeric=True,
    ),
    Detector(
        "SSN",
        re.compile(r"(?i)\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\D{0,12}?(\d{9})(?!\d)"),
        _finds(r"(?i)ssn|social\s+security"),
        group=1,
    ),
    # Phone numbers without a "+" or the North-American punctuation: 555 123 4567, or any 7-15 digit run
    # named as a phone number.
    Detector(
        "PHONE",
        re.compile(r"(?<![\w+-])\d{3} \d{3} \d{4}(?![\w-])"),
        _always,
        numeric=True,
    ),
    Detector(
        "PHONE",
        re.compile(
            r"(?i)\b(?:phone|tel|telephone|mobile|cell|call\s+me\s+(?:at|on)|text\s+me\s+(?:at|on)|whats\s*app|"
            r"number\s+is)\D{0,12}?(\d(?:[ .()-]?\d){6,14})(?![\d])"
        ),
        _finds(r"(?i)phone|tel|mobile|cell|call|text|whats|number"),
        group=1,
    ),
)


class LogRedactor(Redactor):
    """The serving request log's redactor: `LOG_DETECTORS`, run over the text's NFKC form, so full-width
    and other compatibility forms (ａｎｎ＠ｅｘａｍｐｌｅ．ｃｏｍ) are seen as the ASCII they stand for."""

    def __init__(self) -> None:
        super().__init__(LOG_DETECTORS)

    def redact(self, text: str) -> str:
        import unicodedata

        return super().redact(unicodedata.normalize("NFKC", text))
