import random

import torch

from tuneline.llm.ml import checkpoint as ckpt


def _write(folder, step):
    tmp = ckpt.begin(folder, step)
    (tmp / "state.json").write_text("{}")
    return ckpt.publish(folder, step, keep_last=2)


def test_only_renamed_folders_count_and_old_ones_are_pruned(tmp_path):
    for step in (5, 10, 15):
        _write(tmp_path, step)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["checkpoint-00000010", "checkpoint-00000015"]
    # A write interrupted before the rename leaves a temporary folder, which is never picked up...
    (ckpt.begin(tmp_path, 20) / "state.json").write_text("{}")
    assert ckpt.latest(tmp_path).name == "checkpoint-00000015"
    assert ckpt.step_of(ckpt.latest(tmp_path)) == 15
    # ...and is removed by the next write.
    _write(tmp_path, 25)
    assert not list(tmp_path.glob(".tmp-*"))


def test_latest_of_missing_folder_is_none(tmp_path):
    assert ckpt.latest(tmp_path / "nothing") is None


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    first = (random.random(), torch.rand(3))
    ckpt.set_rng_state(state)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_loaded_tensors_land_on_the_requested_device(tmp_path):
    # A checkpoint written by rank 0 of a GPU run holds cuda:0 tensors; each rank must load them onto its own
    # device. "meta" stands in for "a device other than the one the file was saved from" on a CPU machine.
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    loaded = ckpt.load_tensors(tmp_path / "optimizer.pt", torch.device("meta"))
    assert {t.device.type for s in loaded["state"].values() for t in s.values()} == {"meta"}
