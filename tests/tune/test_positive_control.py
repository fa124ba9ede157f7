"""The positive control end to end: ``medaug demo --control`` (the phantom_paper sweep on a
positive_control phantom, through Ray Tune, Ray Train's local mode, MLflow and the report)
orders same-study pairs above instance discrimination, with the paired interval over the
label splits above zero.  Two trials of 20 epochs on about 2,300 films: a quarter of an hour
on two cores, so it runs with the slow set."""

from __future__ import annotations

import csv

import pytest

from medaug.cli import main as cli_main


@pytest.mark.slow
def test_same_study_beats_instance_on_the_positive_control(tmp_path):
    output = tmp_path / "control"
    argv = [
        "demo", "--control", "--quiet", "--num-cpus", "2", "--output", str(output),
        "--set", "space.pretrain.criterion=[instance, patient_same_study]",
        "--set", "baselines=[]",
    ]
    assert cli_main(argv) == 0
    with open(output / "report" / "results.csv", newline="") as f:
        rows = {r["criterion"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"instance", "patient_same_study"}
    same = rows["patient_same_study"]
    assert same["status"] == "FINISHED" and int(float(same["linear_n"])) == 10
    assert float(same["linear_diff"]) > 0
    assert float(same["linear_diff_low"]) > 0  # the 95% paired interval excludes zero
