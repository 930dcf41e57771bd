"""The wrapper in front of every compiled KFP command creates the output locations the launcher leaves out."""

import subprocess
import sys


def test_folder_outputs_and_file_parents_exist_when_the_command_starts(tmp_path):
    model, passed = tmp_path / "a" / "model", tmp_path / "b" / "passed"
    check = f"import os; assert os.path.isdir({str(model)!r}); assert os.path.isdir({str(passed.parent)!r}); " \
            f"assert not os.path.exists({str(passed)!r}); print('ran')"
    done = subprocess.run([sys.executable, "-m", "tuneline.step.outdirs", "--folder", str(model), "--file",
                           str(passed), "--", sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran\n"


def test_the_exit_status_is_the_commands(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tuneline.step.outdirs", "--folder", str(tmp_path / "m"), "--",
                           sys.executable, "-c", "raise SystemExit(5)"])
    assert done.returncode == 5


def test_a_missing_command_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tuneline.step.outdirs", "--folder", str(tmp_path), "--"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "follows `--`" in done.stderr
