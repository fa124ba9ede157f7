"""A smoke sweep over a key inside a declarative criterion, end to end (Ray Tune, Ray Train's
local mode, MLflow, the report)."""

from __future__ import annotations

import csv

import pytest

from medaug.cli import main as cli_main
from medaug.tune.report import read_state
from medaug.tune.tracking import tracker_from_state


@pytest.mark.slow
def test_max_partners_smoke_sweep_end_to_end(tmp_path):
    output = tmp_path / "out"
    argv = [
        "sweep", "--config", "max_partners_phantom", "--smoke", "--quiet", "--num-cpus", "2",
        "--output", str(output),
        "--set", "space.pretrain.criterion.max_partners=[1, null]", "--set", "baselines=[]",
    ]
    assert cli_main(argv) == 0
    with open(output / "report" / "results.csv", newline="") as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"max_partners=1", "max_partners=none"}
    assert rows["max_partners=1"]["criterion"] == "patient_all_studies max_partners=1"
    assert rows["max_partners=none"]["criterion"] == "patient_all_studies"
    for row in rows.values():
        assert row["status"] == "FINISHED" and row["options"] == "distinct images only"
        assert 0.0 <= float(row["linear_mean"]) <= 1.0
    runs = {r.data.tags["trial_key"]: r for r in tracker_from_state(read_state(output)).runs()}
    params = runs["max_partners=1"].data.params
    assert params["criterion"] == "patient_all_studies max_partners=1"
    assert params["pretrain.criterion.preset"] == "patient_all_studies"
    assert params["pretrain.criterion.max_partners"] == "1"
