"""The one way the harnesses set variables for a block: set, unset, and restored afterwards, also on an error."""

import os

import pytest

from tools.conformance.envvars import environment


def test_values_set_unset_and_restored(monkeypatch):
    monkeypatch.setenv("TL_KEPT", "before")
    monkeypatch.delenv("TL_NEW", raising=False)
    with pytest.raises(RuntimeError), environment({"TL_KEPT": None, "TL_NEW": "inside"}):
        assert "TL_KEPT" not in os.environ and os.environ["TL_NEW"] == "inside"
        raise RuntimeError("the block failed")
    assert os.environ["TL_KEPT"] == "before" and "TL_NEW" not in os.environ
