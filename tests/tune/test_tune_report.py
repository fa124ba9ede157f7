"""The report table matches the MLflow runs it is built from (temporary SQLite store)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medaug.errors import MedaugError
from medaug.tune.report import build_table, sweep_table, write_report
from medaug.tune.tracking import (
    Tracker,
    default_artifact_location,
    default_tracking_uri,
    result_metrics,
)

TARGET = "Pleural Effusion"

# key -> (params, linear per-split AUCs, e2e per-split AUCs or None)
RUNS = {
    "criterion=instance": (
        {"criterion": "instance", "crop_scale": None, "negatives": "default"},
        [0.80, 0.82, 0.85, 0.83, 0.84],
        [0.86, 0.88, 0.87, 0.90, 0.89],
    ),
    "criterion=patient_same_study": (
        {"criterion": "patient_same_study", "crop_scale": None, "negatives": "default"},
        [0.86, 0.87, 0.89, 0.88, 0.90],
        [0.90, 0.89, 0.92, 0.91, 0.90],
    ),
    "criterion=patient_same_study,crop_scale=0.95": (
        {"criterion": "patient_same_study", "crop_scale": 0.95, "negatives": "default"},
        [0.88, 0.87, 0.90, 0.89, 0.91],
        None,
    ),
    "all_studies_size_matched": (
        {
            "criterion": "patient_all_studies",
            "crop_scale": None,
            "negatives": "default",
            "size_match": "patient_distinct_studies",
            "distinct_only": True,
        },
        [0.84, 0.83, 0.86, 0.85, 0.84],
        None,
    ),
}


def _results(linear, e2e):
    out = {"linear": {TARGET: _entry(linear)}}
    if e2e is not None:
        out["e2e"] = {TARGET: _entry(e2e)}
    return out


def _entry(aucs):
    return {
        "per_split": [
            {"split": i, "auc": a, "ci_low": a - 0.02, "ci_high": a + 0.02} for i, a in enumerate(aucs)
        ],
        "mean": float(np.mean(aucs)),
        "std": float(np.std(aucs, ddof=1)),
    }


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, mlflow_template):
    out = tmp_path_factory.mktemp("sweep")
    shutil.copy(mlflow_template, out / "mlflow.db")
    uri = default_tracking_uri(out)
    tracker = Tracker(uri, "tbl", "sid-1", default_artifact_location(out))
    for index, (key, (params, linear, e2e)) in enumerate(RUNS.items()):
        run = tracker.start_trial(key, label=key)
        tracker.set_tags(run, {"trial_index": index})
        tracker.log_params(run, params)
        tracker.log_metrics(run, result_metrics(_results(linear, e2e), TARGET))
        tracker.log_metrics(run, {"knn_auc_best": 0.7 + index / 100})
        tracker.end_trial(run)
    base = tracker.start_trial("baseline-random", label="random", kind="baseline")
    tracker.set_tags(base, {"baseline": "random", "trial_index": -1})
    tracker.log_metrics(base, result_metrics(_results([0.60, 0.62, 0.61, 0.63, 0.59], None), TARGET))
    tracker.end_trial(base)
    # A run of another sweep in the same experiment must not leak into this one.
    other = Tracker(uri, "tbl", "sid-2").start_trial("criterion=instance")
    Tracker(uri, "tbl", "sid-2").log_metrics(other, {"linear_auc_mean": 0.1})
    (out / "sweep.json").write_text(
        json.dumps({"experiment": "tbl", "sweep_id": "sid-1", "tracking_uri": uri, "target": TARGET})
    )
    return out


def _paired(a, b):
    d = np.asarray(a) - np.asarray(b)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_table_matches_runs(sweep_dir):
    table = sweep_table(sweep_dir)
    rows = table.rows.set_index("key")
    assert list(rows.index) == ["baseline-random", *RUNS]  # ordered by trial index
    assert table.baseline == "criterion=instance"
    ref_linear, ref_e2e = RUNS["criterion=instance"][1], RUNS["criterion=instance"][2]
    for key, (params, linear, e2e) in RUNS.items():
        row = rows.loc[key]
        assert row["criterion"] == params["criterion"]
        assert row["linear_mean"] == pytest.approx(np.mean(linear))
        assert row["linear_std"] == pytest.approx(np.std(linear, ddof=1))
        assert row["linear_n"] == 5
        if key == "criterion=instance":
            assert math.isnan(row["linear_diff"])
            continue
        mean, lo, hi = _paired(linear, ref_linear)
        assert (row["linear_diff"], row["linear_diff_low"], row["linear_diff_high"]) == pytest.approx((mean, lo, hi))
        if e2e is None:
            assert math.isnan(row["e2e_mean"]) and math.isnan(row["e2e_diff"])
        else:
            assert row["e2e_diff"] == pytest.approx(_paired(e2e, ref_e2e)[0])
    assert rows.loc["criterion=patient_same_study,crop_scale=0.95", "crop_scale"] == "[0.95, 1]"
    assert rows.loc["all_studies_size_matched", "options"] == (
        "size-matched to patient_distinct_studies; distinct images only"
    )
    assert rows.loc["baseline-random", "kind"] == "baseline"
    assert rows.loc["baseline-random", "linear_mean"] == pytest.approx(0.61)


def test_markdown_and_files(sweep_dir):
    table, paths = write_report(sweep_dir)
    md = paths["markdown"].read_text()
    same = RUNS["criterion=patient_same_study"][1]
    mean, lo, hi = _paired(same, RUNS["criterion=instance"][1])
    assert f"{np.mean(same):.3f} ± {np.std(same, ddof=1):.3f}" in md
    assert f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" in md
    assert "criterion=instance (baseline)" in md
    assert "End-to-end" in md
    csv = pd.read_csv(paths["csv"])
    assert list(csv["key"]) == list(table.rows["key"])
    assert csv["linear_mean"].to_numpy() == pytest.approx(table.rows["linear_mean"].to_numpy())
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_named_baseline(sweep_dir):
    table = sweep_table(sweep_dir, baseline="random")
    assert table.baseline == "baseline-random"
    rows = table.rows.set_index("key")
    mean, lo, hi = _paired(RUNS["criterion=instance"][1], [0.60, 0.62, 0.61, 0.63, 0.59])
    assert rows.loc["criterion=instance", "linear_diff"] == pytest.approx(mean)
    assert math.isnan(rows.loc["criterion=instance", "e2e_diff"])  # the baseline has no e2e
    with pytest.raises(MedaugError, match="matches 2 rows"):
        sweep_table(sweep_dir, baseline="patient_same_study")
    with pytest.raises(MedaugError, match="not a row"):
        sweep_table(sweep_dir, baseline="nope")


def test_no_default_baseline_means_no_differences():
    table = build_table([])
    assert table.baseline is None and table.rows.empty
    assert "Δ" not in table.to_markdown()


def test_missing_sweep(tmp_path):
    with pytest.raises(MedaugError, match="holds no sweep"):
        sweep_table(tmp_path)
