from collections import Counter

import pytest

from tuneline.llm.data.split import SplitRatios, assign_split


def test_deterministic_and_roughly_proportional():
    ratios = SplitRatios(validation=0.1, test=0.2)
    first = [assign_split(f"g{i}", ratios, "s") for i in range(5000)]
    assert first == [assign_split(f"g{i}", ratios, "s") for i in range(5000)]
    counts = Counter(first)
    assert abs(counts["test"] / 5000 - 0.2) < 0.03
    assert abs(counts["validation"] / 5000 - 0.1) < 0.03
    assert first != [assign_split(f"g{i}", ratios, "other-seed") for i in range(5000)]


def test_zero_ratios_put_everything_in_train():
    assert {assign_split(f"g{i}", SplitRatios(0, 0)) for i in range(200)} == {"train"}


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_ratios_rejected(val, test):
    with pytest.raises(ValueError, match="ratio"):
        SplitRatios(validation=val, test=test)
