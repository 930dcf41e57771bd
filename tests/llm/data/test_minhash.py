import numpy as np
from datasketch import MinHash

from tuneline.llm.data.minhash import SCHEME, Signer, shingle_hash32, shingle_text


def test_signatures_equal_datasketch_update_batch():
    signer = Signer(num_perm=64, seed=3, shingle_bytes=5)
    texts = [
        shingle_text(t)
        for t in ["Hello  World, order #12 never came!", "ab", "ünïcödé text here", "x" * 40_000]
    ]
    sigs = signer.sign_many(texts)
    for text, sig in zip(texts, sigs, strict=True):
        ref = MinHash(num_perm=64, seed=3, hashfunc=shingle_hash32, scheme=SCHEME)
        ref.update_batch(signer.shingles(text))
        assert np.array_equal(ref.hashvalues, sig)


def test_jaccard_estimate_tracks_similarity():
    signer = Signer()
    base = "my router keeps dropping the connection every evening and restarting does not help at all"
    a, b, c = signer.sign_many(
        [
            shingle_text(base),
            shingle_text(base.upper() + "!"),
            shingle_text("the invoice for my laptop shows the wrong amount"),
        ]
    )
    assert signer.lean(a).jaccard(signer.lean(b)) > 0.9
    assert signer.lean(a).jaccard(signer.lean(c)) < 0.2
