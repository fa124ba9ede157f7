"""MLflow tracking: one parent run per sweep and one run per trial across restarts (and
``kill -9``), the experiment's kind and saved view, datasets and their digests, idempotent
curves, metric naming."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys

import pandas as pd
import pytest

from medaug.tune.tracking import (
    DatasetRecord,
    Tracker,
    best_trial,
    default_artifact_location,
    default_tracking_uri,
    experiment_url,
    file_digest,
    mlflow_ui_command,
    result_metrics,
    splits_record,
    table_digest,
    table_record,
    view_state,
)


@pytest.fixture
def store(store_dir):
    return store_dir, default_tracking_uri(store_dir)


def test_default_locations(tmp_path):
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_artifact_location(tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert mlflow_ui_command("sqlite:////a/b.db") == "mlflow ui --backend-store-uri sqlite:////a/b.db --port 5000"
    assert mlflow_ui_command("http://head:5000") is None  # a server has its own UI
    assert experiment_url("sqlite:////a/b.db", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=medaug"
    )
    assert experiment_url("http://head:5000/", "7", port=1) == (
        "http://head:5000/#/experiments/7/runs?viewStateShareKey=medaug"
    )


def test_view_state_shows_the_comparison_columns():
    view = view_state(["linear", "e2e"], "linear_select_auc_mean")
    assert view["orderByKey"] == "metrics.`linear_auc_mean`" and view["orderByAsc"] is False
    assert view["selectedColumns"] == [
        "attributes.`Dataset`",
        "metrics.`linear_auc_mean`", "metrics.`linear_auc_std`",
        "metrics.`e2e_auc_mean`", "metrics.`e2e_auc_std`",
        "metrics.`linear_select_auc_mean`",
        "params.`method`", "params.`criterion`", "params.`crop_scale`", "params.`negatives`",
        "params.`beta_max`",
    ]
    assert view["columnOrder"][:4] == [
        "attributes.`Run Name`", "runDateAndNestInfo", "attributes.`Dataset`", "duration"
    ]
    assert view["columnOrder"][4:] == view["selectedColumns"][1:]
    assert set(view["columnWidths"]) == set(view["columnOrder"])
    assert view_state()["selectedColumns"][1:3] == [
        "metrics.`linear_auc_mean`", "metrics.`linear_auc_std`"
    ]


def test_new_store_and_experiment(tmp_path):
    """A new SQLite store keeps every artifact location under the sweep's output (MLflow's
    Default experiment included); the experiment is tagged as model training and holds the
    saved view and the description; a deleted experiment is refused clearly."""
    from medaug.errors import MedaugError

    out = tmp_path / "out"
    uri, artifacts = default_tracking_uri(out), default_artifact_location(out)
    tracker = Tracker(uri, "exp-c", "s9", artifacts)
    tracker.setup_experiment(view_state(), "running")
    client = tracker.client
    assert client.get_experiment("0").artifact_location == f"{artifacts}/0"
    exp = client.get_experiment_by_name("exp-c")
    assert exp.artifact_location == artifacts
    assert exp.tags["sweep_id"] == "s9"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(exp.tags["mlflow.sharedViewState.medaug"]) == view_state()
    assert exp.tags["mlflow.note.content"] == "running"
    tracker.set_experiment_tags({"mlflow.note.content": "x" * 30000})  # cut to MLflow's limit
    assert len(client.get_experiment(exp.experiment_id).tags["mlflow.note.content"]) == 20000
    assert Tracker(uri, "exp-c", "s9").experiment_id == exp.experiment_id  # found again
    client.delete_experiment(exp.experiment_id)
    with pytest.raises(MedaugError, match="'exp-c' at .* is deleted; restore it"):
        Tracker(uri, "exp-c", "s9").experiment_id  # noqa: B018


def test_one_run_per_trial_across_restarts(store):
    out, uri = store
    first = Tracker(uri, "exp-a", "s1", default_artifact_location(out))
    parent = first.start_sweep("exp-a")
    run = first.start_trial("criterion=instance", label="instance", parent=parent)
    first.end_trial(run, "FAILED")
    # A new process (a resumed sweep) reuses the runs, found by their tags, and reopens them.
    again = Tracker(uri, "exp-a", "s1")
    assert again.start_sweep("exp-a") == parent
    assert again.start_trial("criterion=instance", parent=parent) == run
    assert again.client.get_run(run).info.status == "RUNNING"
    other = again.start_trial("criterion=patient_same_study", parent=parent)
    assert other != run
    # The same trial key in another sweep is another run, under that sweep's parent.
    elsewhere_tracker = Tracker(uri, "exp-a", "s2")
    elsewhere_parent = elsewhere_tracker.start_sweep("exp-a")
    assert elsewhere_parent != parent
    elsewhere = elsewhere_tracker.start_trial("criterion=instance", parent=elsewhere_parent)
    assert elsewhere not in (run, other)
    runs = again.runs()  # the trials, not the parent
    assert sorted(r.info.run_name for r in runs) == ["criterion=instance", "criterion=patient_same_study"]
    assert {r.data.tags["trial_key"] for r in runs} == {r.info.run_name for r in runs}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    artifacts = again.client.get_experiment(again.experiment_id).artifact_location
    assert artifacts == default_artifact_location(out)


_KILLED_DRIVER = """
import sys, time
from medaug.tune.tracking import Tracker
tracker = Tracker(sys.argv[1], "exp-k", "s1", sys.argv[2])
parent = tracker.start_sweep("exp-k")
first = tracker.start_trial("criterion=instance", parent=parent)
tracker.log_metrics(first, {"linear_auc_mean": 0.61})
tracker.end_trial(first)
second = tracker.start_trial("criterion=patient_same_study", parent=parent)
tracker.log_metrics(second, {"loss": 5.0}, step=1)
print(parent, first, second, flush=True)
time.sleep(600)
"""


def test_parent_and_trial_runs_across_kill_9_and_resume(store):
    """A driver killed with SIGKILL mid-sweep leaves its parent RUNNING and a trial RUNNING;
    the resumed sweep (a new process) continues in the same parent and the same trial
    runs, and adds only the trials that had not started."""
    out, uri = store
    artifacts = default_artifact_location(out)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_DRIVER, uri, artifacts],
                            stdout=subprocess.PIPE, text=True)
    try:
        parent, first, second = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = Tracker(uri, "exp-k", "s1", artifacts)
    assert resumed.find_sweep_run().info.status == "RUNNING"
    assert resumed.start_sweep("exp-k") == parent
    assert resumed.start_trial("criterion=instance", parent=parent) == first
    assert resumed.start_trial("criterion=patient_same_study", parent=parent) == second
    third = resumed.start_trial("criterion=patient_all_studies", parent=parent)
    runs = {r.info.run_name: r for r in resumed.runs()}
    assert sorted(runs) == ["criterion=instance", "criterion=patient_all_studies",
                            "criterion=patient_same_study"]
    assert runs["criterion=patient_all_studies"].info.run_id == third
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent}
    assert runs["criterion=instance"].data.metrics["linear_auc_mean"] == 0.61  # kept
    history = resumed.client.get_metric_history(second, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 5.0)]
    # Exactly one parent in the experiment.
    every = resumed.client.search_runs([resumed.experiment_id])
    assert sum(r.data.tags.get("trial_kind") == "sweep" for r in every) == 1 and len(every) == 4


def test_datasets_are_logged_with_their_digests(store, tmp_path):
    """The metadata table's record (name, digest, rows, patients) and the splits' (digest
    of the file) go to the run once, however often a resumed trial logs them."""
    _, uri = store
    table = pd.DataFrame({
        "patient_id": ["p1", "p1", "p2", "p3"],
        "path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        "Pleural Effusion": [1.0, 0.0, float("nan"), 1.0],
    })
    csv = tmp_path / "data" / "train.csv"
    csv.parent.mkdir()
    table.to_csv(csv, index=False)
    splits = tmp_path / "splits.csv"
    splits.write_text("split,image_id\n0,a\n0,c\n1,b\n")
    meta, drawn = table_record(table, csv, "chexpert"), splits_record(splits)
    assert (meta.name, meta.source) == ("data/train.csv", str(csv.resolve()))
    assert meta.profile == {"rows": 4, "patients": 3, "dataset": "chexpert"}
    assert drawn.digest == hashlib.sha256(splits.read_bytes()).hexdigest()[:16] == file_digest(splits)
    assert drawn.profile == {"rows": 3}
    # The table's digest follows its content, and only its content.
    assert table_digest(table.copy()) == meta.digest and len(meta.digest) == 16
    changed = table.copy()
    changed.loc[2, "patient_id"] = "p9"
    reordered = table.iloc[[1, 0, 2, 3]]
    assert len({meta.digest, table_digest(changed), table_digest(reordered)}) == 3

    tracker = Tracker(uri, "exp-d", "s1")
    run = tracker.start_trial("k")
    tracker.log_datasets(run, [meta, drawn])
    tracker.log_datasets(run, [meta, drawn])  # a resumed trial logs them again
    inputs = tracker.client.get_run(run).inputs.dataset_inputs
    assert sorted((i.dataset.name, i.dataset.digest) for i in inputs) == sorted(
        [("data/train.csv", meta.digest), ("label splits splits.csv", drawn.digest)]
    )
    by_name = {i.dataset.name: i for i in inputs}
    assert json.loads(by_name["data/train.csv"].dataset.profile) == meta.profile
    assert {t.key: t.value for t in by_name["label splits splits.csv"].tags} == {
        "mlflow.data.context": "evaluation"
    }
    assert json.loads(by_name["data/train.csv"].dataset.source) == {"uri": csv.resolve().as_uri()}
    assert DatasetRecord("x", "d", "/x").context == ""


def test_best_trial(store):
    _, uri = store
    tracker = Tracker(uri, "exp-b", "s1")
    values = {"a": 0.61, "b": 0.74, "c": 0.70, "d": None}
    for key, value in values.items():
        run = tracker.start_trial(key)
        if value is not None:
            tracker.log_metrics(run, {"linear_auc_mean": value})
        tracker.end_trial(run, "FINISHED" if key != "c" else "FAILED")
    runs = tracker.runs()
    assert best_trial(runs, "linear_auc_mean").info.run_name == "b"
    assert best_trial(runs, "linear_auc_mean", "min").info.run_name == "a"
    assert best_trial(runs, "e2e_auc_mean") is None


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


def test_summary_params_follow_the_method():
    """A MoCo trial names its negatives; a multi-view MAE trial its beta, distance, mask and
    encoder instead, and no negatives it does not have."""
    from medaug.config import build_config
    from medaug.tune.space import TrialSpec
    from medaug.tune.trial import trial_params

    moco = trial_params(build_config({"moco": {"negatives": "reweighted", "reweight_t": 0.9}}),
                        TrialSpec("m", {}, "m"))
    assert (moco["method"], moco["negatives"], moco["reweight_t"]) == ("moco", "reweighted", 0.9)
    assert "beta_max" not in moco and moco["crop_scale"] is None
    mae = trial_params(build_config({
        "pretrain": {"method": "mvmae"},
        "mvmae": {"beta_max": 0.0, "align": "infonce", "crop_scale": 0.6},
        "data": {"image_size": 224},
    }), TrialSpec("v", {}, "v"))
    assert (mae["method"], mae["beta_max"], mae["align"], mae["crop_scale"]) == (
        "mvmae", 0.0, "infonce", 0.6)
    assert (mae["mask_ratio"], mae["vit"]) == (0.93, "vit_base")
    assert "negatives" not in mae and "reweight_t" not in mae


def test_a_methods_statistics_become_curves(store):
    """The multi-view MAE's loss terms and shares are curves beside the loss, so that a
    negligible or collapsing alignment shows in the UI."""
    _, uri = store
    tracker = Tracker(uri, "exp-c", "s1")
    run = tracker.start_trial("k")
    rows = [{"epoch": e, "loss": 1.0 / e, "recon": 0.9 / e, "align": 0.05, "beta": e / 2,
             "recon_share": 0.9, "align_share": 0.1, "align_cos": 0.5 + e / 10}
            for e in (1, 2)]
    assert tracker.log_curves(run, rows) == 2
    for key in ("recon", "align", "beta", "recon_share", "align_share", "align_cos"):
        history = tracker.client.get_metric_history(run, key)
        assert sorted((m.step, m.value) for m in history) == [(e, rows[e - 1][key]) for e in (1, 2)]
