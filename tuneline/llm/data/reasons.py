"""Why a record is quarantined: machine-readable reasons and the error that carries one."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_ROW = "invalid_row"  # a CSV row whose cell count differs from the header's
    INVALID_SCHEMA = "invalid_schema"
    UNKNOWN_ROLE = "unknown_role"
    EMPTY_CONTENT = "empty_content"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    ASSISTANT_NOT_LAST = "assistant_not_last"
    NO_USER_TURN = "no_user_turn"
    EMPTY_ANSWER = "empty_answer"
    DEGENERATE_REPETITION = "degenerate_repetition"
    TOO_MANY_CHARS = "too_many_chars"
    TOO_MANY_TOKENS = "too_many_tokens"
    # Preference records (``preference``): a pair that teaches nothing, or a record whose label is unusable.
    EMPTY_SIDE = "empty_side"
    CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
    PROMPT_MISMATCH = "prompt_mismatch"
    INVALID_LABEL = "invalid_label"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"


DUPLICATE_REASONS = (Reason.EXACT_DUPLICATE, Reason.NEAR_DUPLICATE)
REJECT_REASONS = tuple(r for r in Reason if r not in DUPLICATE_REASONS)
PREFERENCE_REASONS = (Reason.EMPTY_SIDE, Reason.CHOSEN_EQUALS_REJECTED, Reason.PROMPT_MISMATCH, Reason.INVALID_LABEL)


class RecordError(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
