import numpy as np

from tuneline.llm.data.dedup import ExactDeduper, NearDeduper, record_digest
from tuneline.llm.data.minhash import Signer, shingle_text

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


def test_band_index_finds_exactly_the_candidates_datasketch_minhashlsh_finds():
    """The banding is datasketch's (same bands and rows); only where the band keys are hashed differs."""
    from datasketch import MinHashLSH

    signer = Signer()
    near = NearDeduper(signer, threshold=0.85)
    reference = MinHashLSH(threshold=0.85, num_perm=signer.num_perm, weights=(0.1, 0.9))
    assert (near.bands, near.rows) == (reference.b, reference.r)
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**32, size=(40, signer.num_perm), dtype=np.uint64).astype(np.uint32)
    # Variants of the base rows with a few values changed: some share bands with their base row, some none.
    variants = base[rng.integers(0, len(base), size=200)].copy()
    for row in variants:
        row[rng.choice(signer.num_perm, size=rng.integers(1, 40), replace=False)] = rng.integers(0, 2**32)
    signatures = np.concatenate([base, variants])
    keys = near.band_keys(signatures)
    for i, (signature, band) in enumerate(zip(signatures, keys, strict=True)):
        lean = signer.lean(signature)
        assert near._candidates(band) == set(reference.query(lean)), i
        near._add(band, signature, i, 0)
        reference.insert(i, lean)
