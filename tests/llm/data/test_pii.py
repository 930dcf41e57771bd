import pytest

from tuneline.llm.data.pii import PII_TYPES, Redactor, iban_ok, luhn_ok, redact

POSITIVES = [
    ("EMAIL", "write to jane.doe+tickets@mail.example.co.uk please"),
    ("PHONE", "call +1 415-555-0134 today"),
    ("PHONE", "office: (212) 555-0187"),
    ("PHONE", "ring 415.555.0134"),
    ("PHONE", "+44 20 7946 0958"),
    ("CREDIT_CARD", "card 4111 1111 1111 1111 expired"),
    ("CREDIT_CARD", "card 5500-0000-0000-0004"),
    ("CREDIT_CARD", "amex 378282246310005"),
    ("IBAN", "pay to GB82 WEST 1234 5698 7654 32 by friday"),
    ("IBAN", "DE89370400440532013000"),
    ("SSN", "ssn 123-45-6789."),
    ("IPV4", "server 192.168.1.20 is down"),
    ("IPV4", "admin page at 10.0.0.1."),
    ("IPV6", "host 2001:db8::8a2e:370:7334 unreachable"),
    ("IPV6", "link-local fe80::1ff:fe23:4567:890a"),
    ("AWS_ACCESS_KEY", "key AKIAIOSFODNN7EXAMPLE leaked"),
    ("GITHUB_TOKEN", "token ghp_" + "A1b2" * 9),
    ("GITHUB_TOKEN", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop"),
    ("API_KEY", "OPENAI_KEY sk-proj-abcdefghijklmnopqrstuvwxyz0123"),
    ("API_KEY", "slack xoxb-1234567890-abcdefghij"),
    ("BEARER_TOKEN", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"),
    ("SECRET", 'config password="hunter2hunter"'),
    ("PRIVATE_KEY", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"),
]

NEGATIVES = [
    "card 4111 1111 1111 1112 fails the Luhn check",
    "order 1234567890123456 is not a card number",
    "bad iban GB82 WEST 1234 5698 7654 33",
    "version 1.2.3.4.5 and 999.10.10.10 and v1.2.3",
    "std::vector<int> at 12:30:45",
    "ssn-shaped 000-12-3456 and 666-12-3456 are never issued",
    "dated 2024-01-15, order #48213, 3 items",
    "the word sk-short and ghp_tooshort",
    "keyboard: fine, tokens: none",
    "Bearer of good news",
    "Email me at the office",
]


@pytest.mark.parametrize(("kind", "text"), POSITIVES)
def test_each_type_is_redacted_with_typed_placeholder(kind, text):
    out, counts = redact(text)
    assert f"<{kind}>" in out
    assert counts[kind] >= 1
    assert sum(counts.values()) == 1, counts


@pytest.mark.parametrize("text", NEGATIVES)
def test_lookalikes_are_left_alone(text):
    out, counts = redact(text)
    assert out == text
    assert not counts


def test_every_type_has_a_positive_case():
    assert {kind for kind, _ in POSITIVES} == set(PII_TYPES)


def test_bearer_and_secret_keep_their_labels():
    assert redact("Authorization: Bearer abcdefghijklmnop1234")[0] == "Authorization: Bearer <BEARER_TOKEN>"
    assert redact("api_key = 's3cr3tvalue'")[0] == "api_key = '<SECRET>'"


def test_counts_accumulate_across_texts():
    r = Redactor()
    r.redact("a@b.io and c@d.io")
    r.redact("call +1 415-555-0101")
    assert r.counts == {"EMAIL": 2, "PHONE": 1}


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")
    assert not iban_ok("GB82")
