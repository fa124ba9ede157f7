"""MLflow tracking: one run per trial across restarts, idempotent curves, metric naming."""

from __future__ import annotations

import pytest

from medaug.tune.tracking import (
    Tracker,
    default_artifact_location,
    default_tracking_uri,
    mlflow_ui_command,
    result_metrics,
)


@pytest.fixture
def store(store_dir):
    return store_dir, default_tracking_uri(store_dir)


def test_default_locations(tmp_path):
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_artifact_location(tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert mlflow_ui_command("sqlite:////a/b.db") == "mlflow ui --backend-store-uri sqlite:////a/b.db"


def test_experiment_made_in_a_child_process(tmp_path):
    from medaug.errors import MedaugError

    uri, artifacts = default_tracking_uri(tmp_path), default_artifact_location(tmp_path)
    made = Tracker(uri, "exp-c", "s9", artifacts)
    exp_id = made.start_experiment_process()()  # a new SQLite file: the child migrates it
    assert made.experiment_id == exp_id
    exp = Tracker(uri, "exp-c", "s9").client.get_experiment_by_name("exp-c")
    assert exp.experiment_id == exp_id and exp.artifact_location == artifacts
    assert exp.tags["sweep_id"] == "s9"
    assert Tracker(uri, "exp-c", "s9").start_experiment_process()() == exp_id  # found again
    Tracker(uri, "exp-c", "s9").client.delete_experiment(exp_id)
    with pytest.raises(MedaugError, match="'exp-c' at .* is deleted; restore it"):
        Tracker(uri, "exp-c", "s9").start_experiment_process()()


def test_one_run_per_trial_across_restarts(store):
    out, uri = store
    first = Tracker(uri, "exp-a", "s1", default_artifact_location(out))
    run = first.start_trial("criterion=instance", label="instance")
    first.end_trial(run, "FAILED")
    # A new process (a resumed sweep) reuses the run, found by its tags, and reopens it.
    again = Tracker(uri, "exp-a", "s1")
    assert again.start_trial("criterion=instance") == run
    assert again.client.get_run(run).info.status == "RUNNING"
    other = again.start_trial("criterion=patient_same_study")
    assert other != run
    # The same trial key in another sweep is another run.
    elsewhere = Tracker(uri, "exp-a", "s2").start_trial("criterion=instance")
    assert elsewhere not in (run, other)
    runs = again.runs()
    assert sorted(r.info.run_name for r in runs) == ["criterion=instance", "criterion=patient_same_study"]
    assert {r.data.tags["trial_key"] for r in runs} == {r.info.run_name for r in runs}
    artifacts = again.client.get_experiment(again.experiment_id).artifact_location
    assert artifacts == default_artifact_location(out)


def test_curves_are_logged_once_per_epoch(store):
    _, uri = store
    tracker = Tracker(uri, "exp-b", "s1")
    run = tracker.start_trial("k")
    rows = [{"epoch": 1, "loss": 5.0, "knn_auc": 0.6, "images_per_s": 100.0}]
    assert tracker.log_curves(run, rows) == 1
    rows.append({"epoch": 2, "loss": 4.0, "knn_auc": 0.7, "images_per_s": 110.0})
    assert tracker.log_curves(run, rows) == 1  # only epoch 2 is new (a resumed trial)
    assert tracker.log_curves(run, rows) == 0
    history = tracker.client.get_metric_history(run, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 5.0), (2, 4.0)]


def test_params_are_kept_and_never_rewritten(store):
    _, uri = store
    tracker = Tracker(uri, "exp-c", "s1")
    run = tracker.start_trial("k")
    tracker.log_params(run, {f"p{i}": i for i in range(150)} | {"none": None, "long": "x" * 7000})
    tracker.log_params(run, {"p1": 1, "p2": "changed", "new": [1, 2]})  # no error on a rerun
    params = tracker.client.get_run(run).data.params
    assert params["p1"] == "1" and params["p2"] == "2" and params["new"] == "[1, 2]"
    assert params["none"] == "None" and len(params["long"]) == 6000 and len(params) == 153


def test_result_metrics_names():
    results = {
        "linear": {
            "Pleural Effusion": {
                "per_split": [
                    {"split": 0, "auc": 0.8, "ci_low": 0.7, "ci_high": 0.9},
                    {"split": 1, "auc": 0.6, "ci_low": 0.5, "ci_high": 0.7},
                ],
                "mean": 0.7,
                "std": 0.1414,
            },
            "Edema": {"per_split": [{"split": 0, "auc": 0.5}], "mean": 0.5, "std": 0.0},
        },
        "e2e": {"Pleural Effusion": {"per_split": [{"split": 0, "auc": 0.9}], "mean": 0.9, "std": 0.0}},
        "knn": {"note": "ignored"},
    }
    assert result_metrics(results, "Pleural Effusion") == {
        "linear_auc_mean": 0.7,
        "linear_auc_std": 0.1414,
        "linear_auc_split0": 0.8,
        "linear_ci_low_split0": 0.7,
        "linear_ci_high_split0": 0.9,
        "linear_auc_split1": 0.6,
        "linear_ci_low_split1": 0.5,
        "linear_ci_high_split1": 0.7,
        "Edema/linear_auc_mean": 0.5,
        "Edema/linear_auc_std": 0.0,
        "Edema/linear_auc_split0": 0.5,
        "e2e_auc_mean": 0.9,
        "e2e_auc_std": 0.0,
        "e2e_auc_split0": 0.9,
    }
