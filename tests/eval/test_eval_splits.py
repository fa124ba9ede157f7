"""Label-fraction draws and evaluation partitions."""

import numpy as np
import pytest
from eval_tables import make_table

from medaug.config import build_config, config_to_dict
from medaug.data.schema import label_values
from medaug.data.splits import (
    evaluation_partitions,
    label_fraction_splits,
    load_splits,
    save_splits,
    splits_for,
)
from medaug.engine.data import partition_settings, partitions_for
from medaug.errors import MedaugError


def _both_classes(table, rows, obs="Pleural Effusion"):
    y, m = label_values(table.iloc[rows], obs, "ignore")
    return (y[m] == 1).sum(), (y[m] == 0).sum()


@pytest.mark.parametrize("by", ["patient", "image"])
def test_fraction_classes_and_determinism(table, by):
    pool = np.arange(len(table))
    splits = label_fraction_splits(table, pool, fraction=0.05, n_splits=5, by=by, seed=3,
                                   targets=["Pleural Effusion", "Edema"])
    assert len(splits) == 5
    target = round(0.05 * len(pool))
    patients = table["patient_id"].to_numpy()
    for rows in splits:
        assert len(np.unique(rows)) == len(rows)
        pos, neg = _both_classes(table, rows)
        assert pos >= 1 and neg >= 1
        assert min(_both_classes(table, rows, "Edema")) >= 1
        if by == "image":
            assert len(rows) >= target and len(rows) <= target + 4
        else:
            # Whole patients: every chosen patient brings all of its pool images.
            chosen = np.unique(patients[rows])
            assert np.isin(patients, chosen).sum() == len(rows)
            assert target <= len(rows) <= target + 8 * 3  # at most a few patients over
    again = label_fraction_splits(table, pool, fraction=0.05, n_splits=5, by=by, seed=3,
                                  targets=["Pleural Effusion", "Edema"])
    assert all(np.array_equal(a, b) for a, b in zip(splits, again, strict=True))
    other = label_fraction_splits(table, pool, fraction=0.05, n_splits=5, by=by, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(splits, other, strict=True))
    assert len({tuple(s) for s in splits}) == 5  # the five draws differ


def test_force_include_when_draws_rarely_hold_a_positive():
    table = make_table(300, seed=1, prevalence=0.01, uncertain=0.0)
    pool = np.arange(len(table))
    for rows in label_fraction_splits(table, pool, fraction=0.005, n_splits=5, seed=0):
        pos, neg = _both_classes(table, rows)
        assert pos >= 1 and neg >= 1


def test_impossible_stratification_names_counts(table):
    y, m = label_values(table, "Pleural Effusion", "ignore")
    negatives_only = np.flatnonzero(m & (y == 0))
    with pytest.raises(MedaugError, match=r"'Pleural Effusion' has 0 positive and \d+ negative"):
        label_fraction_splits(table, negatives_only, fraction=0.1)
    with pytest.raises(MedaugError, match="2 of each"):
        label_fraction_splits(table, np.r_[negatives_only, np.flatnonzero(y == 1)[:1]],
                              min_per_class=2)
    with pytest.raises(MedaugError, match="patient, image"):
        label_fraction_splits(table, negatives_only, by="study")


def test_partitions_heldout_patient_disjoint(table):
    parts = evaluation_partitions(table, "csv", heldout_fraction=0.2, select_fraction=0.1,
                                  targets="Pleural Effusion")
    patients = table["patient_id"].to_numpy()
    sets = {k: set(patients[v]) for k, v in parts.items()}
    assert not sets["pool"] & sets["test"] and not sets["select"] & sets["test"]
    assert not sets["pool"] & sets["select"]
    assert sum(len(v) for v in parts.values()) == len(table)
    assert 0.15 < len(parts["test"]) / len(table) < 0.25
    for name in ("select", "test"):
        assert min(_both_classes(table, parts[name])) >= 1
    again = evaluation_partitions(table, "csv", targets="Pleural Effusion")
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_partitions_official_splits():
    t = make_table(100, seed=2, splits={"train": 0.7, "valid": 0.3})
    parts = evaluation_partitions(t, "chexpert")
    assert set(t["split"].iloc[parts["test"]]) == {"valid"}
    assert set(t["split"].iloc[parts["pool"]]) == {"train"}
    assert set(t["split"].iloc[parts["select"]]) == {"train"}  # carved from train
    t = make_table(100, seed=2, splits={"train": 0.6, "valid": 0.2, "test": 0.2})
    parts = evaluation_partitions(t, "mimic")
    assert [set(t["split"].iloc[parts[k]]) for k in ("pool", "select", "test")] == [
        {"train"}, {"valid"}, {"test"}]


@pytest.mark.parametrize(
    "dataset, splits, select_from, test_from",
    [
        ("chexpert", {"train": 0.8, "valid": 0.2}, "train", "valid"),  # valid is the test set
        ("chexpert", {"train": 0.7, "valid": 0.15, "test": 0.15}, "valid", "test"),  # phantom
        ("nih", {"train": 0.8, "test": 0.2}, "train", "test"),  # no valid split
        ("mimic", {"train": 0.7, "valid": 0.15, "test": 0.15}, "valid", "test"),
        ("csv", {"train": 1.0}, "train", "train"),  # test held out of train
    ],
)
def test_selection_is_patient_disjoint_from_test(dataset, splits, select_from, test_from):
    t = make_table(150, seed=5, splits=splits)
    parts = evaluation_partitions(t, dataset, targets="Pleural Effusion", seed=2)
    split = t["split"].to_numpy()
    patients = t["patient_id"].to_numpy()
    assert set(split[parts["select"]]) == {select_from}
    assert set(split[parts["test"]]) == {test_from}
    if test_from != "train":  # an official split is the test set, whole
        assert np.array_equal(np.sort(parts["test"]), np.flatnonzero(split == test_from))
    if select_from != "train":
        assert np.array_equal(np.sort(parts["select"]), np.flatnonzero(split == select_from))
    # Brute force over patients: no patient in two sets; every row in exactly one set.
    owner: dict[str, str] = {}
    for name in ("pool", "select", "test"):
        for p in patients[parts[name]]:
            assert owner.setdefault(p, name) == name, f"{p} in {owner[p]} and {name}"
    assert sorted(np.concatenate([parts[k] for k in ("pool", "select", "test")])) == list(
        range(len(t)))
    assert min(_both_classes(t, parts["select"])) >= 1
    record = parts.describe(t)
    for key, name in (("selection", "select"), ("test", "test")):
        assert record[key]["rows"] == len(parts[name])
        assert record[key]["patients"] == len(set(patients[parts[name]]))
    assert record["selection"]["name"] == ("valid" if select_from == "valid" else "train slice")
    assert record["test"]["name"] == {"valid": "valid", "test": "test"}.get(
        test_from, "train held out")
    assert not parts["select"].flags.writeable  # shared by every stage, never edited


def test_partitions_for_a_config_and_its_saved_copy_agree():
    t = make_table(150, seed=6, splits={"train": 0.85, "valid": 0.15})
    cfg = build_config({"data": {"target": "Edema"},
                        "eval": {"split_seed": 3, "select_fraction": 0.2}})
    parts = partitions_for(t, cfg)
    saved = partitions_for(t, config_to_dict(cfg))
    assert all(np.array_equal(parts[k], saved[k]) for k in parts)
    # The selection slice also holds both classes of the monitor's target (Edema).
    assert min(_both_classes(t, parts["select"], "Edema")) >= 1
    assert partition_settings(cfg)["targets"] == ["Pleural Effusion", "Edema"]
    # A checkpoint saved before a setting existed takes its default.
    old = config_to_dict(cfg)
    del old["eval"]["select_max_images"]
    assert partition_settings(old) == partition_settings(cfg)


def test_partitions_reject_patient_in_train_and_test():
    t = make_table(50, seed=3, splits={"train": 0.8, "test": 0.2})
    test_rows = np.flatnonzero(t["split"] == "test")
    t.loc[test_rows[0], "split"] = "train"  # its patient now has images in both
    if (t["patient_id"] == t.loc[test_rows[0], "patient_id"]).sum() == 1:
        t.loc[np.flatnonzero(t["split"] == "train")[0], "patient_id"] = t.loc[
            test_rows[1], "patient_id"]
        t["study_id"] = t["patient_id"] + "/" + t["image_id"]
    with pytest.raises(MedaugError, match="both the pool and the test"):
        evaluation_partitions(t, "csv")


def test_save_load_roundtrip_and_reuse(tmp_path, table):
    pool = np.arange(len(table))
    splits = label_fraction_splits(table, pool, fraction=0.05, n_splits=3)
    path = save_splits(tmp_path / "splits.csv", table, splits)
    loaded = load_splits(path, table, pool)
    assert all(np.array_equal(a, b) for a, b in zip(splits, loaded, strict=True))
    # splits_for reloads the file rather than redrawing (even with another seed).
    reused = splits_for(path, table, pool, fraction=0.05, n_splits=3, seed=99)
    assert all(np.array_equal(a, b) for a, b in zip(splits, reused, strict=True))
    with pytest.raises(MedaugError, match="holds 3 splits"):
        splits_for(path, table, pool, n_splits=5)
    with pytest.raises(MedaugError, match="outside the labelled pool"):
        load_splits(path, table, pool[: len(pool) // 10])
