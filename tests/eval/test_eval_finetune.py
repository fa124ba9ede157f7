"""End-to-end fine-tuning of one split: runs, selects, resumes exactly."""

import numpy as np
import torch

from medaug.eval.features import module_hash
from medaug.eval.finetune import FinetuneData, FinetuneSettings, finetune
from medaug.eval.metrics import auc
from medaug.models.backbones import build_backbone


def _data():
    rng = np.random.default_rng(0)
    y = np.tile([0.0, 1.0], 15)
    images = rng.integers(0, 120, size=(30, 32, 32), dtype=np.uint8)
    images[y == 1, 8:24, 8:24] += 120  # a bright square marks the positives
    labels = np.stack([y, 1 - y], 1).astype(np.float32)  # two observations
    mask = np.ones_like(labels, bool)
    mask[3, 0] = False  # one uncertain label, left out
    tr, se, te = np.arange(12), np.arange(12, 20), np.arange(20, 30)
    return FinetuneData(images, tr, labels[tr], mask[tr], se, labels[se], mask[se], te), y[te]


def test_finetune_runs_selects_and_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", "random")
    before = module_hash(backbone)
    data, y_test = _data()
    settings = FinetuneSettings(out_size=32, lr=1e-3, batch_size=4, epochs=2, seed=5)
    full = finetune(backbone, dim, data, settings, state_path=tmp_path / "a" / "state.pt",
                    device="cpu", progress=False)
    assert module_hash(backbone) == before  # the caller's encoder is copied, not trained
    assert full["test_scores"].shape == (10, 2)
    assert len(full["history"]) == 2
    sel = [h["select_score"] for h in full["history"]]
    assert full["best_epoch"] == int(np.argmax(sel))
    assert 0.0 <= auc(y_test, full["test_scores"][:, 0]) <= 1.0

    # Stop after one epoch, then resume to two: the same weights, the same scores.
    part = FinetuneSettings(out_size=32, lr=1e-3, batch_size=4, epochs=1, seed=5)
    finetune(backbone, dim, data, part, state_path=tmp_path / "b" / "state.pt", device="cpu",
             progress=False)
    resumed = finetune(backbone, dim, data, settings, state_path=tmp_path / "b" / "state.pt",
                       device="cpu", progress=False)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]
    assert resumed["best_epoch"] == full["best_epoch"]
    np.testing.assert_allclose(resumed["test_scores"], full["test_scores"], atol=1e-5)


def test_finetune_learns_a_visible_signal(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(1)
    backbone, dim = build_backbone("resnet18", "random")
    data, y_test = _data()
    settings = FinetuneSettings(out_size=32, lr=1e-3, batch_size=4, epochs=4, seed=1,
                                rotation=0.0, hflip=0.0)
    out = finetune(backbone, dim, data, settings, device="cpu", progress=False)
    assert auc(y_test, out["test_scores"][:, 0]) > 0.9
