"""Checkpoint selection never sees the test set.

The kNN monitor scores on the evaluation's selection set, builds its memory bank from the
pool, never reads a test image or label, and pretraining learns from no held-out test row.
The datasets are the session phantom in three layouts: as generated (train / valid / test,
like MIMIC), CheXpert-like (train / valid, valid is the test set) and train-only (the test
set is held out of train).
"""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from medaug.data.load import load_table
from medaug.data.schema import label_values
from medaug.engine.checkpoint import load_backbone, load_state
from medaug.engine.data import pair_index, partitions_for, prepare_data, pretraining_rows
from medaug.engine.pretrain import pretrain
from medaug.errors import MedaugError
from medaug.eval.monitor import KnnMonitor, monitor_rows

OBS = "Pleural Effusion"


def _layout(phantom_dir, out, splits, plant=None):
    """A copy of the phantom holding only ``splits`` (CSVs copied, image folders linked);
    ``plant`` maps an image path to the label its valid.csv row gets."""
    out.mkdir(parents=True)
    for split in splits:
        (out / split).symlink_to(phantom_dir / split, target_is_directory=True)
        df = pd.read_csv(phantom_dir / f"{split}.csv")
        if plant is not None and split == "valid":
            df[OBS] = df["Path"].map(plant).to_numpy()
            assert df[OBS].notna().all()
        df.to_csv(out / f"{split}.csv", index=False)
    return out


@pytest.fixture(scope="module")
def chexpert_like(phantom_dir, tmp_path_factory):
    return _layout(phantom_dir, tmp_path_factory.mktemp("cx") / "data", ["train", "valid"])


def _cfg(tiny_config, data_dir, *overrides):
    return tiny_config(f"data.csv={data_dir / 'train.csv'}", *overrides)


@pytest.mark.parametrize(
    "kind, dataset, drop, select_source, test_source",
    [
        ("phantom", "chexpert", None, "valid", "test"),
        ("chexpert-like: valid is the test set", "chexpert", "test", "train slice", "valid"),
        ("nih-like: no valid split", "nih", "valid", "train slice", "test"),
        ("train only", "csv", ("valid", "test"), "train slice", "train held out"),
    ],
)
def test_selection_and_monitor_rows_avoid_test_patients(
    phantom_dir, tiny_config, kind, dataset, drop, select_source, test_source
):
    table = load_table("chexpert", phantom_dir / "train.csv", include_siblings=True)
    if drop is not None:
        table = table[~table["split"].isin(np.atleast_1d(drop))].reset_index(drop=True)
    cfg = tiny_config(f"data.dataset={dataset}")
    parts = partitions_for(table, cfg)
    split = table["split"].to_numpy()
    patients = table["patient_id"].to_numpy()

    # Where each set comes from, against the table's own split column.
    expected_test = {"test": "test", "valid": "valid"}.get(test_source)
    if expected_test:
        assert set(parts.test) == set(np.flatnonzero(split == expected_test))
    else:
        assert set(split[parts.test]) == {"train"}
    if select_source == "valid":
        assert set(parts.select) == set(np.flatnonzero(split == "valid"))
    else:
        assert set(split[parts.select]) == {"train"} and len(parts.select) > 0
    assert (parts.select_source, parts.test_source) == (select_source, test_source)

    (bank, bank_y), (queries, query_y) = monitor_rows(table, parts, cfg)
    test_patients = set(patients[parts.test])
    assert not set(patients[parts.select]) & test_patients
    assert not set(patients[queries]) & test_patients
    assert not set(patients[bank]) & test_patients
    assert set(queries) <= set(parts.select) and set(bank) <= set(parts.pool)
    assert not set(patients[bank]) & set(patients[queries])  # bank and queries disjoint too
    assert len(np.unique(query_y)) == 2  # the selection slice was stratified on the target
    y, m = label_values(table.iloc[queries], OBS, "ignore")
    assert m.all() and np.array_equal(y, query_y)

    record = parts.describe(table)
    assert record["selection"] == {
        "name": select_source, "source": record["selection"]["source"],
        "rows": len(parts.select), "patients": len(set(patients[parts.select]))}
    assert record["test"]["rows"] == len(parts.test)
    assert record["test"]["patients"] == len(test_patients)


class _RecordingImages:
    """The image cache's array, recording every row position read through it."""

    def __init__(self, images):
        self.images = images
        self.shape = images.shape
        self.read: list[int] = []

    def __getitem__(self, rows):
        self.read.extend(np.atleast_1d(np.asarray(rows)).tolist())
        return self.images[rows]


def test_monitor_reads_no_test_image(chexpert_like, tiny_config, tmp_path):
    from medaug.moco.model import build_backbone

    cfg = _cfg(tiny_config, chexpert_like)
    data = prepare_data(cfg, tmp_path, progress=False)
    parts = partitions_for(data.table, cfg)
    # On this layout the test set is the valid split: the rows a monitor scoring on
    # "validation images" would read.
    assert set(parts.test) == set(data.valid) and len(data.valid) > 0
    recorder = _RecordingImages(data.cache.images)
    monitor = KnnMonitor(replace(data, cache=SimpleNamespace(images=recorder)), cfg,
                         torch.device("cpu"))
    assert monitor.problem is None
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", "random", None)
    auc = monitor(backbone)
    assert 0.0 <= auc <= 1.0
    read = set(recorder.read)
    assert read == set(monitor.bank_rows) | set(monitor.query_rows)
    assert not read & set(data.valid)
    test_patients = set(data.table["patient_id"].to_numpy()[data.valid])
    assert not set(data.table["patient_id"].to_numpy()[list(read)]) & test_patients
    assert monitor.sets["selection"]["name"] == "train slice"
    assert monitor.sets["selection"]["knn_queries"] == len(monitor.query_rows)
    assert monitor.sets["test"]["name"] == "valid"

    # Rows pointed at the test set after construction are refused, not read.
    recorder.read.clear()
    monitor.query_rows = np.asarray(data.valid)
    with pytest.raises(RuntimeError, match="test image"):
        monitor(backbone)
    assert recorder.read == []


def _knn_scores(backbone, data, bank_rows, bank_labels, rows, k):
    """Share of positives among the k most cosine-similar bank images (numpy, brute force)."""
    from medaug.data.augment import eval_transform

    def feats(r):
        x = eval_transform(torch.from_numpy(np.asarray(data.cache.images[r])), 32)
        with torch.no_grad():
            f = backbone(x).double()
        return torch.nn.functional.normalize(f, dim=1).numpy()

    sims = feats(rows) @ feats(bank_rows).T  # N x B
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return bank_labels[nearest].mean(axis=1)  # N


def _first_best(aucs):
    """The epoch (1-based) the monitor keeps: the first of the highest AUCs."""
    return int(np.argmax(aucs)) + 1


def test_planted_test_signal_does_not_change_the_chosen_epoch(
    phantom_dir, tiny_config, tmp_path
):
    """Test labels planted so that scoring on the test set would choose another epoch."""
    from sklearn.metrics import roc_auc_score

    overrides = ("pretrain.epochs=3", "pretrain.keep_checkpoints=3", "pretrain.lr=3e-3")
    clean = _layout(phantom_dir, tmp_path / "clean", ["train", "valid"])
    cfg = _cfg(tiny_config, clean, *overrides)
    first = pretrain(cfg, tmp_path / "run_clean", progress=False, monitor=KnnMonitor)
    aucs = [m["knn_auc"] for m in first["history"]]
    assert first["best_epoch"] == _first_best(aucs)

    # A monitor reading the test set (here the valid split) would have scored each epoch's
    # weights on these kNN scores.
    data = prepare_data(cfg, tmp_path / "run_clean", progress=False)
    monitor = KnnMonitor(data, cfg, torch.device("cpu"))
    test_rows = np.asarray(data.valid)
    scores = []
    for epoch in (1, 2, 3):
        backbone, _ = load_backbone(tmp_path / "run_clean" / "checkpoints" / f"epoch_000{epoch}")
        scores.append(_knn_scores(backbone, data, monitor.bank_rows, monitor.bank_labels,
                                  test_rows, cfg.pretrain.knn_k))
    # Labels that rank perfectly under another epoch's scores, chosen so that the test AUC
    # would pick an epoch other than the one the monitor picked.
    plant = None
    for other in (e for e in (1, 2, 3) if e != first["best_epoch"]):
        for threshold in np.unique(scores[other - 1])[1:]:
            labels = (scores[other - 1] >= threshold).astype(float)
            oracle = [roc_auc_score(labels, s) for s in scores]
            if _first_best(oracle) != first["best_epoch"]:
                plant = labels
                break
        if plant is not None:
            break
    assert plant is not None, "no planted labelling favours another epoch"
    by_path = dict(zip(data.table["path"].to_numpy()[test_rows], plant, strict=True))
    planted = _layout(phantom_dir, tmp_path / "planted", ["train", "valid"], plant=by_path)

    cfg_planted = _cfg(tiny_config, planted, *overrides)
    again = pretrain(cfg_planted, tmp_path / "run_planted", progress=False, monitor=KnnMonitor)
    planted_data = prepare_data(cfg_planted, tmp_path / "run_planted", progress=False)
    y, m = label_values(planted_data.table.iloc[planted_data.valid], OBS, "ignore")
    assert m.all() and np.array_equal(y, plant)  # the plant is in the table pretraining read
    assert again["best_epoch"] == first["best_epoch"]
    assert [m["knn_auc"] for m in again["history"]] == aucs
    assert [m["loss"] for m in again["history"]] == [m["loss"] for m in first["history"]]
    for summary in (first, again):
        assert summary["selected_by"] == "kNN monitor"
        assert summary["selection"]["name"] == "train slice"
        assert summary["test"]["name"] == "valid"
        assert summary["test"]["rows"] == len(test_rows)
    on_disk = json.loads((tmp_path / "run_planted" / "summary.json").read_text())
    assert on_disk["selection"] == again["selection"]


def test_pretraining_learns_from_no_heldout_test_row(phantom_dir, tiny_config, tmp_path):
    train_only = _layout(phantom_dir, tmp_path / "data", ["train"])
    cfg = _cfg(tiny_config, train_only)
    summary = pretrain(cfg, tmp_path / "run", progress=False, monitor=KnnMonitor)
    data = prepare_data(cfg, tmp_path / "run", progress=False)
    parts = partitions_for(data.table, cfg)
    assert summary["test"]["name"] == "train held out" and len(parts.test) > 0
    rows = pretraining_rows(data, parts)
    assert set(rows) == set(data.train) - set(parts.test)
    assert summary["pretraining_images"]["rows"] == len(rows)
    anchors = rows[pair_index(data, cfg, rows).anchors]
    assert not set(anchors) & set(parts.test)
    # Every key the queue holds came from a non-test image.
    queue = load_state(tmp_path / "run" / "checkpoints" / "epoch_0002")["extra"]["queue"]
    keys = [int(i) for i in queue["image"].tolist() if int(i) >= 0]
    assert keys and not set(keys) & set(parts.test)

    # Evaluating it against another held-out test set (another split seed) would test on
    # patients pretraining learned from: refused.
    from medaug.eval.evaluate import evaluate

    with pytest.raises(MedaugError, match="checkpoint's pretraining"):
        evaluate(_cfg(tiny_config, train_only, "eval.split_seed=5"), tmp_path / "run",
                 tmp_path / "eval", progress=False)
