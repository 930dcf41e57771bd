"""Cron and timezone checks: both cluster schedulers accept what they cannot run, so we refuse it here."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_NAMES = {
    "month": ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    "day of week": ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}


def _number(token: str, field: str, low: int) -> int:
    names = _NAMES.get(field)
    if names and token.lower() in names:
        return names.index(token.lower()) + (1 if field == "month" else 0)
    if not token.isdigit():
        raise ValueError(f"cron {field}: '{token}' is not a number")
    return int(token)


def _check_field(text: str, field: str, low: int, high: int) -> None:
    for part in text.split(","):
        if not part:
            raise ValueError(f"cron {field}: empty list item")
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"cron {field}: step '{step}' must be a positive number")
        if base == "*":
            continue
        start, _, end = base.partition("-")
        first = _number(start, field, low)
        last = _number(end, field, low) if end else first
        for value in (first, last):
            if not low <= value <= high:
                raise ValueError(f"cron {field}: {value} is outside {low}-{high}")
        if last < first:
            raise ValueError(f"cron {field}: range {base} runs backwards")


def check_cron(expression: str) -> None:
    """Accept the five-field cron syntax that both Kubeflow (with seconds added) and Azure ML understand."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron '{expression}' needs 5 fields (minute hour day month weekday), got {len(fields)}")
    for text, (field, low, high) in zip(fields, _FIELDS, strict=True):
        _check_field(text, field, low, high)


def check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone '{name}' (use an IANA name such as UTC or Europe/Paris)") from None
