"""The whole nested evaluation on a small phantom: linear, end-to-end, resume, CLI."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from medaug.cli import main
from medaug.config import build_config
from medaug.data.phantom import make_phantom
from medaug.errors import MedaugError
from medaug.eval.evaluate import eval_backbone, evaluate
from medaug.eval.features import module_hash


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom30")
    make_phantom(out / "data", 30, 32, seed=0, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def chexpert_like(phantom):
    """The phantom without its test.csv: as on CheXpert, the valid split is the test set."""
    out = phantom / "chexpert_like"
    (out / "data").mkdir(parents=True)
    for split in ("train", "valid"):
        (out / "data" / split).symlink_to(phantom / "data" / split, target_is_directory=True)
        shutil.copy(phantom / "data" / f"{split}.csv", out / "data" / f"{split}.csv")
    return out


def _cfg(phantom, **eval_overrides):
    torch.set_num_threads(1)
    ev = {"fraction": 0.2, "n_splits": 3, "linear_epochs": 3, "linear_lr": 1e-3,
          "bootstrap": 50, "e2e_epochs": 1, "e2e_lr": 1e-4, "e2e_batch_size": 8,
          "e2e_ray": False}
    ev.update(eval_overrides)
    return build_config({
        "data": {"dataset": "chexpert", "csv": str(phantom / "data" / "train.csv"),
                 "image_size": 32, "cache_dir": str(phantom / "cache"),
                 "num_loader_workers": 1},
        "eval": ev,
    })


def _study_level(studies, labels, mask, scores, how):
    """Study-level labels and scores with pandas: a study is positive when any usable image
    label is, usable when any image label is, and scores the max or mean of its images."""
    df = pd.DataFrame({"study": studies, "y": np.where(mask, labels, np.nan), "s": scores})
    grouped = df.groupby("study", sort=False)
    y = grouped["y"].max()  # NaN: no usable label in the study
    s = grouped["s"].max() if how == "max" else grouped["s"].mean()
    keep = y.notna().to_numpy()
    return y.to_numpy()[keep], s.to_numpy()[keep]


def _check_aucs_against_sklearn(cfg, out_dir, res, kind):
    """Every per-split AUC of ``res[kind]`` equals sklearn's on the saved test scores, and
    the saved labels are the table's labels of the saved test rows."""
    from sklearn.metrics import roc_auc_score

    from medaug.data.schema import label_values
    from medaug.engine.data import prepare_data

    table = prepare_data(cfg, out_dir, progress=False).table
    how = cfg.eval.study_level
    checked = 0
    for o, obs in enumerate(res["observations"]):
        for row in res[kind][obs]["per_split"]:
            i = row["split"]
            name = "linear.npz" if kind == "linear" else f"e2e_split{i}.npz"
            saved = np.load(out_dir / "scores" / name)
            scores = saved["scores"][i] if kind == "linear" else saved["scores"]  # N_test x O
            rows = saved["rows"]
            assert len(rows) == res["test"]["rows"] == scores.shape[0]
            y, m = label_values(table.iloc[rows], obs, cfg.data.uncertain)
            assert np.array_equal(saved["labels"][:, o], y.astype(np.float32))
            assert np.array_equal(saved["mask"][:, o], m)
            if how:
                studies = table["study_id"].to_numpy()[rows]
                yy, ss = _study_level(studies, y, m, scores[:, o], how)
            else:
                yy, ss = y[m], scores[m, o]
            assert row["auc"] == pytest.approx(roc_auc_score(yy, ss), abs=1e-12)
            checked += 1
    assert checked == len(res["observations"]) * cfg.eval.n_splits


def _check_entry(entry, n_splits):
    item = entry["Pleural Effusion"]
    assert [r["split"] for r in item["per_split"]] == list(range(n_splits))
    for r in item["per_split"]:
        assert 0.0 <= r["auc"] <= 1.0
        assert r["ci_low"] <= r["ci_high"]
    aucs = [r["auc"] for r in item["per_split"]]
    assert item["mean"] == pytest.approx(np.mean(aucs))
    if n_splits > 1:
        assert item["std"] == pytest.approx(np.std(aucs, ddof=1))
    else:
        assert item["std"] is None
    assert item["n"] == n_splits


def test_linear_evaluation_schema_splits_and_resume(phantom, tmp_path):
    cfg = _cfg(phantom)
    reports = []
    res = evaluate(cfg, None, tmp_path, baseline="random", report=reports.append,
                   progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["linear"] == res["linear"]
    _check_entry(res["linear"], 3)
    assert "e2e" not in res
    assert res["uncertain"] == "ignore" and res["level"] == "image"
    # The phantom has its own valid split to select on and a test split to report.
    assert res["selection"]["name"] == "valid" and res["test"]["name"] == "test"
    assert res["selection"]["rows"] == len(pd.read_csv(phantom / "data" / "valid.csv"))
    assert res["test"]["rows"] == len(pd.read_csv(phantom / "data" / "test.csv"))
    assert res["pretraining"] is None  # a baseline: no checkpoint selection
    assert res["config"]["fraction"] == 0.2
    assert len(reports) == 3 and reports[0]["kind"] == "linear"
    assert (tmp_path / "roc.png").stat().st_size > 0
    # The encoder evaluated is the seeded random one, and it came out unchanged.
    assert res["encoder"]["hash"] == module_hash(eval_backbone(cfg, None, "random")[0])

    # The saved draws: three splits, none of their patients in the test set.
    splits = pd.read_csv(res["splits_csv"], dtype=str)
    assert sorted(splits["split"].unique()) == ["0", "1", "2"]
    test = pd.read_csv(phantom / "data" / "test.csv")
    test_patients = {p.split("/")[1] for p in test["Path"]}
    assert not set(splits["patient_id"]) & test_patients

    # A rerun skips the finished probe (features and results untouched).
    feature_files = list((tmp_path / "features").glob("*.npy"))
    mtimes = [os.path.getmtime(f) for f in feature_files]
    stamp = os.path.getmtime(tmp_path / "scores" / "linear.npz")
    again = evaluate(cfg, None, tmp_path, baseline="random", progress=False)
    assert again["linear"] == res["linear"]
    assert os.path.getmtime(tmp_path / "scores" / "linear.npz") == stamp
    assert [os.path.getmtime(f) for f in feature_files] == mtimes


def test_end_to_end_in_process_with_study_level(phantom, tmp_path):
    cfg = _cfg(phantom, linear=False, e2e=True, n_splits=2, study_level="max")
    res = evaluate(cfg, None, tmp_path, baseline="random", progress=False)
    _check_entry(res["e2e"], 2)
    assert "linear" not in res and res["level"] == "study-max"
    _check_aucs_against_sklearn(cfg, tmp_path, res, "e2e")
    assert (tmp_path / "e2e" / "split1" / "state.pt").exists()
    # Resume: both splits are done, so nothing is fine-tuned again.
    stamp = os.path.getmtime(tmp_path / "e2e" / "split0" / "state.pt")
    again = evaluate(cfg, None, tmp_path, baseline="random", progress=False)
    assert again["e2e"] == res["e2e"]
    assert os.path.getmtime(tmp_path / "e2e" / "split0" / "state.pt") == stamp


@pytest.mark.parametrize("study_level", [None, "mean"])
def test_per_split_aucs_match_sklearn_on_saved_scores(chexpert_like, tmp_path, study_level):
    cfg = _cfg(chexpert_like, observations=["Pleural Effusion", "Edema"],
               study_level=study_level)
    res = evaluate(cfg, None, tmp_path, baseline="random", progress=False)
    _check_aucs_against_sklearn(cfg, tmp_path, res, "linear")
    # CheXpert's layout: the valid split is reported, so the epochs are chosen on a
    # patient-disjoint slice of train.
    table = pd.read_csv(chexpert_like / "data" / "valid.csv")
    assert res["test"] == {"name": "valid", "source": res["test"]["source"],
                           "rows": len(table),
                           "patients": table["Path"].str.split("/").str[1].nunique()}
    assert res["selection"]["name"] == "train slice"
    train_patients = set(pd.read_csv(chexpert_like / "data" / "train.csv")["Path"]
                         .str.split("/").str[1])
    assert res["selection"]["patients"] <= len(train_patients)
    aucs = [r["auc"] for r in res["linear"]["Pleural Effusion"]["per_split"]]
    assert len(set(aucs)) > 1  # the splits differ, so the comparison is not of one number


@pytest.mark.slow  # starting Ray and its worker takes about a minute and a half here
def test_end_to_end_on_ray_train_one_worker(phantom, tmp_path):
    import ray

    cfg = _cfg(phantom, linear=False, e2e=True, n_splits=1, e2e_ray=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = evaluate(cfg, None, tmp_path, baseline="random", progress=False)
    finally:
        ray.shutdown()
    _check_entry(res["e2e"], 1)
    # The worker trained the same split as the in-process path would (same seed): compare.
    local = evaluate(_cfg(phantom, linear=False, e2e=True, n_splits=1), None,
                     tmp_path / "local", baseline="random", progress=False)
    assert res["e2e"]["Pleural Effusion"]["per_split"][0]["auc"] == pytest.approx(
        local["e2e"]["Pleural Effusion"]["per_split"][0]["auc"], abs=1e-6)


def test_user_errors(phantom, tmp_path):
    cfg = _cfg(phantom)
    with pytest.raises(MedaugError, match="pretrain.weights"):
        evaluate(cfg, None, tmp_path, baseline="imagenet", progress=False)
    with pytest.raises(MedaugError, match="valid: random, imagenet"):
        evaluate(cfg, None, tmp_path, baseline="moco", progress=False)
    with pytest.raises(MedaugError, match="does not exist"):
        evaluate(cfg, tmp_path / "nope", tmp_path, progress=False)


def test_cli_prints_table_and_errors(phantom, tmp_path, capsys):
    sets = ["--set", f"data.csv={phantom / 'data' / 'train.csv'}", "--set", "data.image_size=32",
            "--set", f"data.cache_dir={phantom / 'cache'}", "--set", "eval.fraction=0.2",
            "--set", "eval.n_splits=2", "--set", "eval.linear_epochs=2", "--set",
            "eval.bootstrap=20"]
    code = main(["evaluate", "--baseline", "random", "--output", str(tmp_path), "--quiet",
                 *sets])
    out = capsys.readouterr().out
    assert code == 0
    assert "linear probe - Pleural Effusion" in out and "mean" in out and "±" in out
    assert (tmp_path / "results.json").exists()
    code = main(["evaluate", "--baseline", "imagenet", "--output", str(tmp_path), "--quiet",
                 *sets])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pretrain.weights" in err
