import json
import subprocess
import sys

from tuneline.step.gate import SKIP_MARKER, SKIPPED


def _gate(tmp_path, gate: str) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    return subprocess.run(
        [sys.executable, "-m", "tuneline.step.gate", "--gate", gate,
         "--skip", f"model:folder:{out}/model", "--skip", f"card:file:{out}/card.md",
         "--skip", f"promoted:boolean:{out}/promoted", "--skip", f"uri:string:{out}/uri",
         "--", sys.executable, "-c", f"open('{out}/ran', 'w').write('yes')"],
        capture_output=True, text=True, check=True)


def test_a_true_gate_runs_the_command_and_writes_nothing_else(tmp_path):
    (tmp_path / "out").mkdir()
    _gate(tmp_path, "true")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ran"]


def test_a_false_gate_fills_every_output_and_says_skipped(tmp_path):
    result = _gate(tmp_path, "false")
    out = tmp_path / "out"
    assert SKIPPED in result.stdout and not (out / "ran").exists()
    assert (out / "model" / SKIP_MARKER).read_text().strip() == SKIPPED
    assert (out / "card.md").read_text().strip() == SKIPPED
    assert json.loads((out / "promoted").read_text()) is False  # a step gated on it skips too
    assert (out / "uri").read_text() == ""


def test_the_gate_can_be_a_value_folder(tmp_path):
    folder = tmp_path / "gate"
    folder.mkdir()
    (folder / "value").write_text("false")
    assert SKIPPED in _gate(tmp_path, str(folder)).stdout
    (folder / "value").write_text("true")
    _gate(tmp_path, str(folder))
    assert (tmp_path / "out" / "ran").exists()
