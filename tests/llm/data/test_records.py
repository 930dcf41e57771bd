import json

import pytest

from tuneline.llm.data.normalize import normalize_text
from tuneline.llm.data.records import Budget, Reason, RecordError, estimate_tokens, parse_line


def chat(*turns, **extra):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra}).encode()


OK = chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"))


NO_LIMITS = Budget()


def reason_of(line: bytes, budget: Budget = NO_LIMITS) -> Reason:
    with pytest.raises(RecordError) as info:
        parse_line(line, budget)
    return info.value.reason


def test_valid_chat_record_keeps_passthrough_fields():
    rec = parse_line(chat(("user", "Hi"), ("assistant", "Hello"), id="a1", tools=[{"name": "f"}]), Budget())
    assert rec.to_json() == {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "id": "a1",
        "tools": [{"name": "f"}],
    }


def test_prompt_completion_becomes_chat():
    line = json.dumps({"prompt": "2+2?", "completion": " 4", "system": "math", "id": 7}).encode()
    rec = parse_line(line, Budget())
    assert rec.messages == [
        {"role": "system", "content": "math"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert rec.extra == {"id": 7}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe{}", Reason.INVALID_UTF8),
        (b'{"messages": [', Reason.INVALID_JSON),
        (b'{"text": "x"}', Reason.INVALID_SCHEMA),
        (b"[1, 2]", Reason.INVALID_SCHEMA),
        (b'{"messages": []}', Reason.INVALID_SCHEMA),
        (
            b'{"messages": [{"role": "user", "content": ["part"]}, {"role": "assistant", "content": "x"}]}',
            Reason.INVALID_SCHEMA,
        ),
        (b'{"prompt": "a", "completion": 3}', Reason.INVALID_SCHEMA),
        (
            b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}',
            Reason.INVALID_UTF8,
        ),
        (chat(("human", "Hi"), ("assistant", "Hello")), Reason.UNKNOWN_ROLE),
        (chat(("user", " \t\u200b "), ("assistant", "Hello")), Reason.EMPTY_CONTENT),
        (chat(("system", "s"), ("user", "Hi")), Reason.NO_ASSISTANT_TURN),
        (chat(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")), Reason.ASSISTANT_NOT_LAST),
    ],
)
def test_each_rejection_reason(line, reason):
    assert reason_of(line) == reason


def test_budgets():
    long = chat(("user", "word " * 300), ("assistant", "ok"))
    assert reason_of(long, Budget(max_chars=1000)) == Reason.TOO_MANY_CHARS
    assert reason_of(long, Budget(max_tokens=100)) == Reason.TOO_MANY_TOKENS
    assert parse_line(long, Budget(max_chars=2000, max_tokens=400)).chars > 1000


def test_error_detail_names_the_message():
    with pytest.raises(RecordError, match=r"messages\[1\]\.role is 'bot'"):
        parse_line(chat(("user", "Hi"), ("bot", "x")), Budget())


def test_normalisation_is_nfc_not_nfkc():
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # canonical composition
    assert normalize_text("x\u00b2 \ufb01le") == "x\u00b2 \ufb01le"  # compatibility forms kept
    assert normalize_text("  a\r\nb\u00a0c \n\n\n\nd\u200b  ") == "a\nb c\n\nd"
    assert normalize_text("    indented code") == "indented code"
    assert normalize_text("def f():\n    return 1") == "def f():\n    return 1"


def test_token_estimate_splits_long_words():
    assert estimate_tokens("hello, world") == 5  # hell o , worl d
