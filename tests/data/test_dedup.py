import numpy as np

from tuneline.data.dedup import ExactDeduper, NearDeduper, record_digest
from tuneline.data.minhash import Signer, shingle_text

TICKET = (
    "Hello, my NovaBook laptop will not turn on after the latest update and I have tried holding the "
    "power button for thirty seconds as the manual says, without any luck."
)


def test_record_digest_ignores_metadata_but_not_roles():
    m = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    swapped = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert record_digest(m) == record_digest([dict(x, name="n") for x in m])
    assert record_digest(m) != record_digest(swapped)
    assert record_digest(m) != record_digest(m, tools=[{"name": "f"}])


def test_exact_deduper_remembers_first_line():
    d = ExactDeduper()
    d.add(b"k", 3)
    d.add(b"k", 9)
    assert d.original_of(b"k") == 3 and d.original_of(b"z") is None


def test_near_deduper_flags_small_edits_only():
    signer = Signer()
    near = NearDeduper(signer, threshold=0.9)
    texts = [
        TICKET,
        TICKET.replace("Hello,", "Hi,"),
        TICKET.upper(),
        "Please change the email address on my account for the Pulse phone.",
    ]
    sigs = signer.sign_many([shingle_text(t) for t in texts])
    assert near.check_and_add(sigs[0], 1) is None
    line, sim = near.check_and_add(sigs[1], 2)
    assert line == 1 and 0.9 <= sim < 1.0
    assert near.check_and_add(sigs[2], 3) == (1, 1.0)
    assert near.check_and_add(sigs[3], 4) is None
    assert len(near) == 2


def test_near_deduper_threshold_is_respected():
    signer = Signer()
    strict = NearDeduper(signer, threshold=0.99)
    a, b = signer.sign_many([shingle_text(TICKET), shingle_text(TICKET.replace("thirty", "forty"))])
    assert strict.check_and_add(a, 1) is None
    assert strict.check_and_add(b, 2) is None
    assert np.count_nonzero(a == b) < 0.99 * signer.num_perm


def test_near_duplicates_must_share_the_answer():
    signer = Signer(64)
    text = b"my laptop will not start after the update today"
    a, b = signer.sign_many([text, text + b" !"])
    near = NearDeduper(signer, threshold=0.8)
    assert near.check_and_add(a, 1, answer=7) is None
    assert near.check_and_add(b, 2, answer=8) is None  # a different answer: a different record
    assert near.check_and_add(b, 3, answer=7) is not None
