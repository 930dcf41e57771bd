"""Every pipeline compiles for every target and matches its golden files (regenerate: `make golden`)."""

import pytest
from make_golden import ROOT, compile_to, normalise, sources

CASES = sources()


@pytest.mark.parametrize("pipeline", list(CASES), ids=lambda p: str(p.relative_to(ROOT)))
def test_compiled_output_matches_golden(pipeline, tmp_path):
    golden = CASES[pipeline]
    files = compile_to(pipeline, tmp_path)
    assert golden.is_dir(), f"no golden files for {pipeline.name}: run `make golden`"
    produced = {p.relative_to(tmp_path) for p in files}
    expected = {p.relative_to(golden) for p in golden.rglob("*") if p.is_file()}
    assert produced == expected, "files differ from the golden set: run `make golden` and review the diff"
    for rel in sorted(produced):
        got = normalise((tmp_path / rel).read_text(), tmp_path / rel)
        want = normalise((golden / rel).read_text(), golden / rel)
        assert got == want, f"{rel} differs from its golden file: run `make golden` and review the diff"
