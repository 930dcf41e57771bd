"""The fingerprint task's digest follows the bytes of the imported data, not its name."""

from tuneline.step.digest import path_sha256
from tuneline.step.fingerprint import main


def test_digest_is_written_verbatim_and_changes_with_the_content(tmp_path):
    data, out = tmp_path / "tickets.jsonl", tmp_path / "outputs" / "sha256"
    data.write_text('{"a": 1}\n')
    assert main([str(data), str(out)]) == 0
    first = out.read_text()
    assert first == path_sha256(data) and len(first) == 64  # a STRING output: no quotes, no newline
    data.write_text('{"a": 2}\n')  # updated in place, same URI
    main([str(data), str(out)])
    assert out.read_text() != first


def test_a_folder_is_digested_by_its_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("x\n")
    main([str(folder), str(tmp_path / "d")])
    assert (tmp_path / "d").read_text() == path_sha256(folder)
