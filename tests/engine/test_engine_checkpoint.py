"""Checkpoint files: atomic folders, the latest pointer, retention, the best, RNG states."""

import os
import random

import numpy as np
import pytest
import torch

from medaug.engine import checkpoint as ckpt
from medaug.errors import MedaugError


def _state(value: float) -> dict:
    return {"epoch": int(value), "w": torch.full((3,), value), "config": {"a": [1, 2], "b": None}}


def test_write_checkpoint_keeps_the_newest_and_points_latest(tmp_path):
    for epoch in range(1, 5):
        folder = ckpt.write_checkpoint(tmp_path, epoch, _state(epoch), {"epoch": epoch}, keep=2)
        assert folder.name == f"epoch_{epoch:04d}"
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["epoch_0003", "epoch_0004"]
    assert (root / "latest").read_text().strip() == "epoch_0004"
    assert ckpt.latest_checkpoint(tmp_path) == root / "epoch_0004"
    assert ckpt.checkpoint_epoch(root / "epoch_0003") == 3
    state = ckpt.load_state(root / "epoch_0004")
    assert torch.equal(state["w"], torch.full((3,), 4.0))
    assert state["config"] == {"a": [1, 2], "b": None}
    assert not list(root.glob("*.tmp"))


def test_rewriting_an_epoch_replaces_it(tmp_path):
    ckpt.write_checkpoint(tmp_path, 1, _state(1), {"epoch": 1})
    ckpt.write_checkpoint(tmp_path, 1, _state(7), {"epoch": 1})
    assert torch.equal(ckpt.load_state(tmp_path / "checkpoints" / "epoch_0001")["w"],
                       torch.full((3,), 7.0))
    assert not (tmp_path / "checkpoints" / "epoch_0001.old").exists()


def test_half_written_and_stale_checkpoints_are_ignored(tmp_path):
    ckpt.write_checkpoint(tmp_path, 2, _state(2), {"epoch": 2})
    root = tmp_path / "checkpoints"
    # A crash while writing epoch 3 leaves only its temporary folder behind.
    (root / "epoch_0003.tmp").mkdir()
    torch.save(_state(3), root / "epoch_0003.tmp" / "state.pt")
    assert ckpt.latest_checkpoint(tmp_path) == root / "epoch_0002"
    # A stale pointer falls back to the newest complete folder.
    (root / "latest").write_text("epoch_0009\n")
    assert ckpt.latest_checkpoint(tmp_path) == root / "epoch_0002"
    (root / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path) == root / "epoch_0002"


def test_best_is_a_hard_link_of_its_epoch_and_described_in_best_json(tmp_path):
    folder = ckpt.write_checkpoint(tmp_path, 1, _state(1), {"epoch": 1})
    best = ckpt.write_best(tmp_path, _state(1), {"epoch": 1, "knn_auc": 0.7}, link_from=folder)
    assert os.path.samefile(best / "state.pt", folder / "state.pt")
    assert ckpt.best_checkpoint(tmp_path) == best
    import json

    info = json.loads((tmp_path / "best.json").read_text())
    assert info["epoch"] == 1 and info["knn_auc"] == 0.7 and info["checkpoint"] == str(best)
    # Pruning the epoch folder leaves the best one intact.
    for epoch in (2, 3):
        ckpt.write_checkpoint(tmp_path, epoch, _state(epoch), {"epoch": epoch}, keep=1)
    assert not folder.exists()
    assert torch.equal(ckpt.load_state(tmp_path)["w"], torch.full((3,), 1.0))


def test_best_checkpoint_falls_back_to_latest_and_errors_when_empty(tmp_path):
    with pytest.raises(MedaugError, match="no pretraining checkpoint"):
        ckpt.best_checkpoint(tmp_path)
    ckpt.write_checkpoint(tmp_path, 1, _state(1), {"epoch": 1})
    assert ckpt.best_checkpoint(tmp_path).name == "epoch_0001"


def test_load_state_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(MedaugError, match="not a pretraining checkpoint"):
        ckpt.load_state(tmp_path / "nowhere")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(MedaugError, match="cannot read checkpoint"):
        ckpt.load_state(bad)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(5)
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 (the global generator is what is under test)
    torch.manual_seed(3)
    torch.save({"rng": ckpt.capture_rng({"augment": gen})}, tmp_path / "rng.pt")

    def draw():
        return (random.random(), np.random.random(), torch.rand(2).tolist(),  # noqa: NPY002
                torch.rand(2, generator=gen).tolist())

    first = draw()
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    ckpt.restore_rng(state["rng"], {"augment": gen})
    assert draw() == first
