"""The report table against the MLflow runs it is built from (temporary SQLite store), and
its significance marks against scipy and a hand-written Holm step-down."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medaug.errors import MedaugError
from medaug.tune.report import build_table, heldout_counts, sweep_table, write_report
from medaug.tune.tracking import (
    Tracker,
    default_artifact_location,
    default_tracking_uri,
    result_metrics,
    tracker_from_state,
)

TARGET = "Pleural Effusion"
BASE_LINEAR = [0.80, 0.82, 0.85, 0.83, 0.84]
BASE_E2E = [0.86, 0.88, 0.87, 0.90, 0.89]


def _plus(base, deltas):
    return [round(b + d, 4) for b, d in zip(base, deltas, strict=True)]


# key -> (params, linear per-split AUCs, e2e per-split AUCs or None)
RUNS = {
    "criterion=instance": (
        {"criterion": "instance", "crop_scale": None, "negatives": "default"},
        BASE_LINEAR,
        BASE_E2E,
    ),
    # A clear effect in the linear probe; end to end, p = 0.051 before any correction.
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
    # Noise: differences of either sign around zero, in both stages.
    "criterion=patient_distinct_studies": (
        {"criterion": "patient_distinct_studies", "crop_scale": None, "negatives": "default"},
        _plus(BASE_LINEAR, [0.010, -0.012, 0.008, -0.006, 0.001]),
        _plus(BASE_E2E, [-0.010, 0.010, 0.005, -0.005, 0.000]),
    ),
    # Linear: consistent over the splits but smaller than the test set can resolve;
    # end to end: a clear effect.
    "criterion=patient_same_study_same_lat": (
        {"criterion": "patient_same_study_same_lat", "crop_scale": None, "negatives": "default"},
        _plus(BASE_LINEAR, [0.010, 0.011, 0.009, 0.010, 0.012]),
        _plus(BASE_E2E, [0.030, 0.035, 0.030, 0.040, 0.030]),
    ),
}
RANDOM = [0.60, 0.62, 0.61, 0.63, 0.59]
N_POS, N_NEG = 2000, 8000  # usable target labels of the constructed test set


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


def _write_test_labels(folder):
    """What evaluate leaves in a trial's eval folder: results.json and the test scores with
    the test labels (Edema first, the target second; uncertain target labels masked)."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(
        json.dumps({"observations": ["Edema", TARGET], "level": "image"})
    )
    rng = np.random.default_rng(3)
    n = N_POS + N_NEG + 500
    target = np.r_[np.ones(N_POS), np.zeros(N_NEG), rng.integers(0, 2, 500)]
    mask = np.r_[np.ones(N_POS + N_NEG, bool), np.zeros(500, bool)]
    labels = np.stack([rng.integers(0, 2, n), target], axis=1).astype(np.float32)
    masks = np.stack([np.ones(n, bool), mask], axis=1)
    (folder / "scores").mkdir()
    np.savez(folder / "scores" / "linear.npz", scores=rng.random((5, n, 2)), labels=labels,
             mask=masks, rows=np.arange(n), studies=np.arange(n).astype(str))


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
    tracker.log_metrics(base, result_metrics(_results(RANDOM, None), TARGET))
    tracker.end_trial(base)
    # A run of another sweep in the same experiment must not leak into this one.
    other = Tracker(uri, "tbl", "sid-2").start_trial("criterion=instance")
    Tracker(uri, "tbl", "sid-2").log_metrics(other, {"linear_auc_mean": 0.1})
    (out / "sweep.json").write_text(
        json.dumps({"experiment": "tbl", "sweep_id": "sid-1", "tracking_uri": uri, "target": TARGET})
    )
    _write_test_labels(out / "trials" / "criterion=instance" / "eval")
    return out


# --- independent references -------------------------------------------------------------------


def _paired(a, b):
    """Mean paired difference, its 95% t interval and the paired t-test's p (scipy)."""
    d = np.asarray(a) - np.asarray(b)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half, stats.ttest_rel(a, b).pvalue


def _holm(p):
    """Holm's step-down, one test at a time: {key: adjusted p}."""
    order = sorted(p, key=p.get)
    out, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[key]))
        out[key] = running
    return out


def _floor(a):
    """(z_0.975 + z_0.8) sqrt(2) SE, SE by Hanley-McNeil at AUC a on the test set."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (N_POS - 1) * (q1 - a * a) + (N_NEG - 1) * (q2 - a * a)) / (N_POS * N_NEG)
    return (1.959963984540054 + 0.8416212335729143) * math.sqrt(2 * var)


def _mlflow_splits(sweep_dir):
    """Per-split AUCs of every run as stored in MLflow: {key: {stage: [auc per split]}}."""
    runs = tracker_from_state(json.loads((sweep_dir / "sweep.json").read_text())).runs()
    out = {}
    for run in runs:
        m = run.data.metrics
        out[run.data.tags["trial_key"]] = {
            stage: [m[f"{stage}_auc_split{i}"] for i in range(5)]
            for stage in ("linear", "e2e") if f"{stage}_auc_split0" in m
        }, m
    return out


# --- tests --------------------------------------------------------------------------------------


def test_table_matches_runs(sweep_dir):
    """Every figure of the table, both stages, recomputed from the values stored in MLflow."""
    table = sweep_table(sweep_dir)
    rows = table.rows.set_index("key")
    assert list(rows.index) == ["baseline-random", *RUNS]  # ordered by trial index
    assert table.baseline == "criterion=instance"
    assert table.test_counts == (N_POS, N_NEG)
    stored = _mlflow_splits(sweep_dir)
    assert sorted(stored) == sorted(rows.index)
    ref_splits = stored["criterion=instance"][0]
    for stage in ("linear", "e2e"):
        p_raw = {}
        for key, (splits, metrics) in stored.items():
            row = rows.loc[key]
            if stage not in splits:
                assert math.isnan(row[f"{stage}_mean"]) and math.isnan(row[f"{stage}_diff"])
                continue
            aucs = splits[stage]
            # Against what was logged (the runs' own summaries) and the per-split values.
            assert row[f"{stage}_mean"] == pytest.approx(metrics[f"{stage}_auc_mean"])
            assert row[f"{stage}_std"] == pytest.approx(metrics[f"{stage}_auc_std"])
            assert row[f"{stage}_mean"] == pytest.approx(np.mean(aucs))
            assert row[f"{stage}_std"] == pytest.approx(np.std(aucs, ddof=1))
            assert row[f"{stage}_n"] == 5
            assert [table.splits[key][stage][f"split{i}"] for i in range(5)] == pytest.approx(aucs)
            if key == "criterion=instance":
                assert math.isnan(row[f"{stage}_diff"]) and math.isnan(row[f"{stage}_p"])
                continue
            mean, lo, hi, p = _paired(aucs, ref_splits[stage])
            assert (row[f"{stage}_diff"], row[f"{stage}_diff_low"], row[f"{stage}_diff_high"]) == (
                pytest.approx((mean, lo, hi))
            )
            assert row[f"{stage}_diff_std"] == pytest.approx(
                np.std(np.subtract(aucs, ref_splits[stage]), ddof=1)
            )
            assert row[f"{stage}_p"] == pytest.approx(p, rel=1e-9)
            p_raw[key] = p
            floor = _floor(np.mean(ref_splits[stage]))
            assert row[f"{stage}_mde_test"] == pytest.approx(floor, rel=1e-9)
            assert row[f"{stage}_mde"] == pytest.approx(max(floor, row[f"{stage}_mde_splits"]))
        holm = _holm(p_raw)
        for key, adjusted in holm.items():
            assert rows.loc[key, f"{stage}_p_holm"] == pytest.approx(adjusted, rel=1e-9)
            assert bool(rows.loc[key, f"{stage}_significant"]) == (adjusted < 0.05)
    assert rows.loc["criterion=patient_same_study,crop_scale=0.95", "crop_scale"] == "[0.95, 1]"
    assert rows.loc["all_studies_size_matched", "options"] == (
        "size-matched to patient_distinct_studies; distinct images only"
    )
    assert rows.loc["baseline-random", "kind"] == "baseline"
    assert rows.loc["baseline-random", "linear_mean"] == pytest.approx(0.61)


def test_significance_marks(sweep_dir):
    """A clear effect reads as one, noise as noise, a too-small effect carries its caveat."""
    table = sweep_table(sweep_dir)
    rows = table.rows.set_index("key")
    verdicts = {
        (key, stage): (bool(rows.loc[key, f"{stage}_significant"]), bool(rows.loc[key, f"{stage}_below_floor"]))
        for key in rows.index if key != table.baseline
        for stage in ("linear", "e2e") if math.isfinite(rows.loc[key, f"{stage}_diff"])
    }
    assert verdicts == {
        ("baseline-random", "linear"): (True, False),
        ("criterion=patient_same_study", "linear"): (True, False),
        ("criterion=patient_same_study", "e2e"): (False, False),  # p = 0.051, then Holm
        ("criterion=patient_same_study,crop_scale=0.95", "linear"): (True, False),
        ("all_studies_size_matched", "linear"): (False, False),
        ("criterion=patient_distinct_studies", "linear"): (False, False),
        ("criterion=patient_distinct_studies", "e2e"): (False, False),
        ("criterion=patient_same_study_same_lat", "linear"): (True, True),  # 0.010 < floor
        ("criterion=patient_same_study_same_lat", "e2e"): (True, False),
    }
    md = table.to_markdown()
    lines = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}

    def cell(key, stage):  # the Δ cell of a row: after Trial, Method, ..., the stage's AUC
        cells = lines[key].strip("| ").split(" | ")
        return cells[6 + 1 + (4 if stage == "e2e" else 0)]

    same = RUNS["criterion=patient_same_study"][1]
    mean, lo, hi, _ = _paired(same, BASE_LINEAR)
    assert cell("criterion=patient_same_study", "linear") == f"**{mean:+.3f}** [{lo:+.3f}, {hi:+.3f}] *"
    noise = RUNS["criterion=patient_distinct_studies"]
    for stage, aucs, base in (("linear", noise[1], BASE_LINEAR), ("e2e", noise[2], BASE_E2E)):
        mean, lo, hi, _ = _paired(aucs, base)
        assert cell("criterion=patient_distinct_studies", stage) == f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] n.s."
    assert cell("criterion=patient_same_study_same_lat", "linear").endswith("] * †")
    assert "**" not in cell("criterion=patient_same_study_same_lat", "linear")
    assert cell("criterion=patient_same_study_same_lat", "e2e").startswith("**+0.033**")
    assert cell("criterion=patient_same_study", "e2e").endswith("n.s.")
    assert "Holm" in md and "`n.s.` not significant" in md and "Hanley–McNeil" in md
    assert f"{N_POS} positive and {N_NEG} negative" in md
    assert f"{_floor(np.mean(BASE_LINEAR)):.3f} (linear)" in md


def test_markdown_and_files(sweep_dir):
    table, paths = write_report(sweep_dir)
    md = paths["markdown"].read_text()
    same = RUNS["criterion=patient_same_study"][1]
    assert f"{np.mean(same):.3f} ± {np.std(same, ddof=1):.3f}" in md
    assert "criterion=instance (baseline)" in md
    assert "End-to-end" in md and "Δ end-to-end [95% CI]" in md and "MDE (end-to-end)" in md
    csv = pd.read_csv(paths["csv"])
    assert list(csv["key"]) == list(table.rows["key"])
    for column in ("linear_mean", "linear_std", "linear_diff_low", "e2e_diff_high", "e2e_p_holm", "linear_mde"):
        np.testing.assert_allclose(csv[column].to_numpy(), table.rows[column].to_numpy(dtype=float))
    assert list(csv["linear_significant"]) == list(table.rows["linear_significant"])
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_named_baseline(sweep_dir):
    table = sweep_table(sweep_dir, baseline="random")
    assert table.baseline == "baseline-random"
    rows = table.rows.set_index("key")
    mean, lo, hi, p = _paired(BASE_LINEAR, RANDOM)
    assert (rows.loc["criterion=instance", "linear_diff"], rows.loc["criterion=instance", "linear_p"]) == (
        pytest.approx((mean, p))
    )
    assert math.isnan(rows.loc["criterion=instance", "e2e_diff"])  # the baseline has no e2e
    # The baseline's own trial folder holds no test labels: another trial's are used.
    assert table.test_counts == (N_POS, N_NEG)
    with pytest.raises(MedaugError, match="matches 2 rows"):
        sweep_table(sweep_dir, baseline="patient_same_study")
    with pytest.raises(MedaugError, match="not a row"):
        sweep_table(sweep_dir, baseline="nope")


def test_without_test_labels_the_mde_comes_from_the_splits(sweep_dir):
    runs = tracker_from_state(json.loads((sweep_dir / "sweep.json").read_text())).runs()
    table = build_table(runs)
    rows = table.rows.set_index("key")
    assert table.test_counts is None
    key = "criterion=patient_same_study"
    assert math.isnan(rows.loc[key, "linear_mde_test"]) and not rows.loc[key, "linear_below_floor"]
    assert rows.loc[key, "linear_mde"] == pytest.approx(rows.loc[key, "linear_mde_splits"])
    assert "floor is unknown" in table.to_markdown()


def test_heldout_counts_at_study_level(tmp_path):
    """Study-level evaluations count studies: a study is positive if any usable image is."""
    folder = tmp_path / "trials" / "k" / "eval"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"observations": [TARGET], "level": "study-max"}))
    (folder / "scores").mkdir()
    # Studies: a (1, 0) -> positive; b (0, 0) -> negative; c (masked 1, 0) -> negative;
    # d (masked only) -> unusable.
    np.savez(folder / "scores" / "linear.npz",
             labels=np.array([[1], [0], [0], [0], [1], [0], [1]], np.float32),
             mask=np.array([[1], [1], [1], [1], [0], [1], [0]], bool),
             studies=np.array(["a", "a", "b", "b", "c", "c", "d"]))
    assert heldout_counts(tmp_path, ["missing", "k"], TARGET) == (1, 2)
    assert heldout_counts(tmp_path, ["k"], "Edema") is None
    assert heldout_counts(tmp_path, ["missing"]) is None


def test_no_default_baseline_means_no_differences():
    table = build_table([])
    assert table.baseline is None and table.rows.empty
    assert "Δ" not in table.to_markdown()


def test_missing_sweep(tmp_path):
    with pytest.raises(MedaugError, match="holds no sweep"):
        sweep_table(tmp_path)
