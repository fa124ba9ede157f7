import json
import subprocess
import sys
from pathlib import Path

import pytest

from medaug.cli import main
from medaug.data.schema import OBSERVATIONS

OBS = "Pleural Effusion"


def write_chexpert_csv(path: Path) -> Path:
    """A six-image CheXpert train.csv: the hand table of the stats tests."""
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
    images = [
        ("patient00001/study1/view1_frontal.jpg", "Frontal", "AP", "1.0"),
        ("patient00001/study1/view2_lateral.jpg", "Lateral", "", "1.0"),
        ("patient00001/study12/view1_frontal.jpg", "Frontal", "PA", "0.0"),
        ("patient00002/study1/view1_frontal.jpg", "Frontal", "AP", "-1.0"),
        ("patient00002/study2/view1_frontal.jpg", "Frontal", "AP", ""),
        ("patient00003/study1/view1_frontal.jpg", "Frontal", "PA", "0.0"),
    ]
    lines = [",".join(header)]
    for rel, lat, proj, effusion in images:
        labels = [effusion if obs == OBS else "" for obs in OBSERVATIONS]
        lines.append(
            ",".join([f"CheXpert-v1.0-small/train/{rel}", "Female", "60", lat, proj, *labels])
        )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def csv(tmp_path):
    return write_chexpert_csv(tmp_path / "train.csv")


def test_pairs_json_and_summary(csv, tmp_path, capsys):
    out = tmp_path / "out" / "pairs.json"
    rc = main(
        [
            "pairs",
            "--dataset",
            "chexpert",
            "--csv",
            str(csv),
            "--criterion",
            "patient_distinct_studies",
            "--label",
            OBS,
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "patient_distinct_studies" in printed and "label disagreement" in printed
    stats = json.loads(out.read_text())
    assert stats["n_images"] == 6 and stats["n_patients"] == 3 and stats["n_studies"] == 5
    assert stats["n_fallback"] == 1 and stats["n_with_other"] == 5
    assert stats["set_size_hist"] == {"1": 5, "2": 1}
    assert stats["label_disagreement"]["share_all_different"] == pytest.approx(1.0)


def test_pairs_options_and_plot(csv, tmp_path):
    png = tmp_path / "pairs.png"
    out = tmp_path / "pairs.json"
    rc = main(
        [
            "pairs",
            "--csv",
            str(csv),
            "--criterion",
            "patient_all_studies",
            "--distinct-only",
            "--size-match",
            "patient_same_study",
            "--uncertain",
            "zeros",
            "--label",
            OBS,
            "--seed",
            "3",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    stats = json.loads(out.read_text())
    # Without x, same-study sets: only p1's study1 pair has one; all others are skipped.
    assert stats["n_anchors"] == 2 and stats["n_skipped"] == 4
    assert stats["size_match"] == "patient_same_study" and stats["distinct_only"] is True
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_pairs_anchors_with(csv, tmp_path, capsys):
    out = tmp_path / "pairs.json"
    rc = main(
        [
            "pairs",
            "--csv",
            str(csv),
            "--criterion",
            "patient_same_study_same_lat",
            "--size-match",
            "patient_same_study_distinct_lat",
            "--anchors-with",
            "patient_same_study_distinct_lat",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "anchors with a partner under patient_same_study_distinct_lat" in printed
    stats = json.loads(out.read_text())
    # Only patient 1's study1 holds a frontal and a lateral: its two images are the anchors,
    # each its own same-laterality set (x is in it; no distinct-only).
    assert stats["anchors_with"] == "patient_same_study_distinct_lat"
    assert stats["n_anchors"] == 2 and stats["n_restricted"] == 4 and stats["n_skipped"] == 4
    assert stats["n_fallback"] == 0 and stats["n_with_other"] == 0
    assert stats["set_size_hist"] == {"1": 2}


def test_pairs_criterion_yaml_inline_equals_the_named_criterion(csv, tmp_path):
    named, inline = tmp_path / "named.json", tmp_path / "inline.json"
    base = ["pairs", "--csv", str(csv), "--label", OBS]
    assert (
        main([*base, "--criterion", "patient_same_study_distinct_lat", "--json", str(named)]) == 0
    )
    spec = "{same: [patient_id, study_id], distinct: [view]}"
    assert main([*base, "--criterion-yaml", spec, "--json", str(inline)]) == 0
    assert json.loads(inline.read_text()) == json.loads(named.read_text())
    assert json.loads(inline.read_text())["criterion"] == "patient_same_study_distinct_lat"


def test_pairs_criterion_yaml_file(csv, tmp_path, capsys):
    spec = tmp_path / "close_studies.yaml"
    spec.write_text(
        "same: [patient_id]\ndistinct: [study_id]\nwithin: {study_order: 1}\nmax_partners: 1\n"
    )
    out = tmp_path / "pairs.json"
    assert (
        main(["pairs", "--csv", str(csv), "--criterion-yaml", str(spec), "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    name = "same=patient_id distinct=study_id within=study_order<=1 max_partners=1"
    assert f"criterion {name} on 6 images" in printed
    stats = json.loads(out.read_text())
    # Only patient 2's studies 1 and 2 are one apart; patient 1's are study1 and study12.
    assert stats["criterion"] == name
    assert stats["criterion_spec"] == {
        "same": ["patient_id"],
        "distinct": ["study_id"],
        "within": {"study_order": 1},
        "max_partners": 1,
    }
    assert stats["n_anchors"] == 6 and stats["n_fallback"] == 4 and stats["n_with_other"] == 2
    rc = main(["pairs", "--csv", str(csv), "--criterion-yaml", str(spec), "--distinct-only"])
    assert rc == 0 and "anchors 2 (skipped 4)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--criterion", "same_study"], "unknown pair criterion 'same_study'; valid: instance, "),
        (["--criterion", "patient_same_study", "--size-match", "x"], "unknown pair criterion 'x'"),
        (
            ["--criterion", "patient_same_study", "--label", "Effusion"],
            "unknown observation 'Effusion'",
        ),
        (["--criterion", "instance", "--distinct-only"], "leaves no anchors"),
        (
            ["--criterion", "patient_same_study", "--anchors-with", "lateral"],
            "unknown pair criterion 'lateral'; valid: instance, ",
        ),
        (["--criterion", "patient_same_study", "--anchors-with", "instance"], "leaves no anchors"),
        (
            ["--criterion-yaml", "{same: [patient_id], within: {study_dayz: 3}}"],
            "--criterion-yaml: criterion 'same=patient_id within=study_dayz<=3' reads unknown "
            "column(s) study_dayz; the canonical table has: image_id",
        ),
        (["--criterion-yaml", "{same: [view], distinct: [view]}"], "cannot be both"),
        (["--criterion-yaml", "{same: [patient_id], maxpartners: 2}"], "unknown criterion key"),
        (["--criterion-yaml", "{same: [patient_id"], "--criterion-yaml is not valid YAML"),
        (["--criterion-yaml", "[patient_id]"], "must hold a criterion mapping"),
        (["--criterion-yaml", "missing.yaml"], "file missing.yaml does not exist"),
        (
            [
                "--criterion-yaml",
                "{same: [patient_id], distinct: [study_id], within: {study_days: 5}}",
            ],
            "selects no image for any of the 6 anchors",
        ),
        (["--criterion", "patient_all_studies_same_label"], "compares downstream labels"),
        (
            ["--criterion", "patient_same_study", "--map", "patient_id"],
            "must look like canonical=column",
        ),
    ],
)
def test_pairs_errors(csv, capsys, extra, message):
    rc = main(["pairs", "--csv", str(csv), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert err.startswith("medaug pairs: error:") and err.count("\n") == 1


def test_missing_csv(tmp_path, capsys):
    rc = main(["pairs", "--csv", str(tmp_path / "nope.csv"), "--criterion", "instance"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.csv does not exist" in err and err.count("\n") == 1


def test_pairs_imports_no_heavy_modules(csv, tmp_path):
    code = (
        "import sys\n"
        "from medaug.cli import main\n"
        f"rc = main(['pairs', '--csv', {str(csv)!r}, '--criterion', 'patient_same_study',"
        f" '--label', {OBS!r}])\n"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert "HEAVY [] 0" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    "criterion, message",
    [
        ("{same: [view], distinct: [view]}", "column(s) view cannot be both 'same' and 'distinct'"),
        ("{same: [patient_id], within: {study_dayz: 3}}", "reads unknown column(s) study_dayz"),
        ("{same: [patient_id], max_partners: 0}", "max_partners must be at least 1"),
        ("{preset: patient_same_studdy}", "unknown pair criterion 'patient_same_studdy'"),
    ],
)
def test_bad_criterion_in_every_command(csv, tmp_path, capsys, criterion, message):
    """The same one-line error, exit status 2, before any work, wherever a criterion goes."""
    commands = {
        "pairs": ["pairs", "--csv", str(csv), "--criterion-yaml", criterion],
        "pretrain": ["pretrain", "--set", f"pretrain.criterion={criterion}",
                     "--set", f"data.csv={csv}", "--output", str(tmp_path / "run")],
        "sweep": ["sweep", "--config", "table6", "--smoke", "--output", str(tmp_path / "sweep"),
                  "--dry-run", "--set", f"pretrain.criterion={criterion}"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.startswith(f"medaug {name}: error:"), (name, err)
        assert err.count("\n") == 1, (name, err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
