"""The multi-view MAE in sweeps: the shipped sweeps expand to their trials (and shrink for
--smoke), and a real two-trial smoke sweep (Ray Tune, Ray Train's local mode, MLflow) runs a
MoCo and an MVMAE trial side by side on the same label splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medaug.cli import main as cli_main
from medaug.tune.report import read_state
from medaug.tune.space import VARIANT, load_sweep
from medaug.tune.tracking import tracker_from_state

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def _trials(sweep):
    return {t.key: sweep.resolve(t.params) for t in sweep.grid_trials()}


def test_mvmae_sweep_is_the_reference_set_up():
    trials = _trials(load_sweep("mvmae"))
    assert len(trials) == 1 + 3 * 3  # the random ViT, then 3 alignments x 3 view pairs
    random = trials.pop("baseline-random")
    assert random.pretrain.method == "mvmae" and random.mvmae.vit == "vit_base"
    grid = set()
    for cfg in trials.values():
        p, m = cfg.pretrain, cfg.mvmae
        assert (p.method, p.optimizer, p.lr, p.weight_decay, p.lr_schedule, p.grad_clip,
                p.batch_size) == ("mvmae", "adamw", pytest.approx(1.2e-4 * 64 / 256), 0.05,
                                  "cosine", 1.0, 64)
        assert 0 < p.warmup_epochs < p.epochs
        assert (m.vit, m.patch_size, m.mask_ratio, cfg.data.image_size) == (
            "vit_base", 16, 0.93, 224)
        assert cfg.data.dataset == "mimic" and cfg.eval.study_level == "mean"
        grid.add((p.criterion, m.beta_max, m.align if m.beta_max else None))
    assert grid == {(c, b, a) for c in ("patient_same_study_distinct_lat", "patient_same_study",
                                         "patient_distinct_studies")
                    for b, a in ((0.0, None), (2.0, "mse"), (2.0, "infonce"))}


@pytest.mark.parametrize("name", ["structure", "structure_phantom"])
def test_structure_sweeps_compare_moco_and_the_maes(name):
    sweep = load_sweep(name, output="/tmp/structure-out")
    trials = _trials(sweep)
    variants = {t.params.get(VARIANT): t.key for t in sweep.grid_trials()}
    by = {v: trials[k] for v, k in variants.items() if v}
    moco = by["moco_same_study"]
    assert (moco.pretrain.method, moco.pretrain.arch, moco.pretrain.criterion,
            moco.pretrain.crop_scale) == ("moco", "resnet18", "patient_same_study", 0.95)
    assert by["moco_frontal_lateral"].pretrain.criterion == "patient_same_study_distinct_lat"
    assert by["moco_vit_same_study"].pretrain.arch.startswith("vit_")
    mae = by["mvmae_frontal_lateral"]
    assert (mae.pretrain.method, mae.pretrain.criterion, mae.mvmae.beta_max) == (
        "mvmae", "patient_same_study_distinct_lat", 2.0)
    single = by["single_view_mae"]
    assert (single.pretrain.method, single.pretrain.criterion, single.mvmae.beta_max) == (
        "mvmae", "instance", 0.0)
    # One dataset, one image size and one evaluation protocol: the label splits are shared.
    assert len({(c.data.dataset, c.data.csv, c.data.image_size, json.dumps(vars(c.eval),
                                                                          default=str))
                for c in trials.values()}) == 1
    assert trials["baseline-random"].pretrain.method == "moco"


@pytest.mark.parametrize("name", ["mvmae", "structure", "structure_phantom"])
def test_smoke_dry_run(name, tmp_path, capsys):
    assert cli_main(["sweep", "--config", name, "--output", str(tmp_path), "--dry-run",
                     "--smoke"]) == 0
    assert "trials:" in capsys.readouterr().out
    for cfg in _trials(load_sweep(name, smoke=True)).values():
        assert cfg.pretrain.epochs == 2 and cfg.pretrain.warmup_epochs == 0
        if cfg.pretrain.method == "mvmae":
            assert (cfg.mvmae.vit, cfg.data.image_size % cfg.mvmae.patch_size) == ("vit_nano", 0)


# ---------------------------------------------------------------------------------------------
# A real smoke sweep


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory):
    """structure_phantom cut to MoCo on same-study pairs and the multi-view MAE on frontal
    and lateral films, run as a smoke sweep: both trials pretrain through Ray Train's local
    mode in their own Tune trial process, two at a time."""
    import torch

    from medaug.tune.sweep import run_sweep

    folder = tmp_path_factory.mktemp("mvmae_sweep")
    raw = yaml.safe_load((SWEEPS / "structure_phantom.yaml").read_text())
    raw["name"] = "two_methods"
    raw["space"]["variants"] = [v for v in raw["space"]["variants"]
                                if v["name"] in ("moco_same_study", "mvmae_frontal_lateral")]
    raw["baselines"] = []
    raw["tune"].update({"max_concurrent": 2, "resources": {"cpu": 0, "gpu": 0}})
    path = folder / "two_methods.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    torch.set_num_threads(1)
    output = folder / "out"
    table = run_sweep(str(path), output, smoke=True, progress=False, num_cpus=2)
    return output, table


def test_moco_and_mvmae_trials_finish_with_a_linear_auc(two_methods):
    output, table = two_methods
    keys = ["moco_same_study", "mvmae_frontal_lateral"]
    assert read_state(output)["trials"] == keys
    rows = table.rows.set_index("key")
    assert list(rows.loc[keys, "status"]) == ["FINISHED", "FINISHED"]
    runs = {r.data.tags["trial_key"]: r for r in tracker_from_state(read_state(output)).runs()}
    assert sorted(runs) == keys
    for key, method in zip(keys, ("moco", "mvmae"), strict=True):
        run = runs[key]
        assert run.info.status == "FINISHED"
        assert run.data.params["pretrain.method"] == method
        assert 0.0 <= run.data.metrics["linear_auc_mean"] <= 1.0
        assert rows.loc[key, "linear_mean"] == pytest.approx(run.data.metrics["linear_auc_mean"])
        folder = output / "trials" / key
        results = json.loads((folder / "eval" / "results.json").read_text())
        assert results["encoder"]["method"] == method
        assert results["splits_csv"] == str(output / "splits.csv")  # the same label splits
    # The MAE's statistics, every epoch of its run.
    lines = [json.loads(x) for x in (output / "trials" / keys[1] / "pretrain" / "metrics.jsonl")
             .read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert all({"recon", "align", "beta", "recon_share", "align_share", "n_align_pairs",
                "n_single_views"} <= set(m) for m in lines)
    assert [m["beta"] for m in lines] == [0.0, 2.0]  # the sigmoid ramp's ends
    # Both trials were scored on the same label splits, selection and test sets.
    a, b = (json.loads((output / "trials" / k / "eval" / "results.json").read_text())
            for k in keys)
    assert (a["selection"], a["test"], a["sizes"]) == (b["selection"], b["test"], b["sizes"])
