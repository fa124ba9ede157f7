"""The phantom dataset: determinism, CheXpert layout, label and structure invariants, study
dates, the style's knobs, signal."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medaug.cli import main
from medaug.data import phantom
from medaug.data.load import load_table
from medaug.data.schema import OBSERVATIONS
from medaug.errors import MedaugError

SIZE = 48
PATH_RE = re.compile(r"^(train|valid|test)/patient(\d{5})/study(\d+)/view(\d+)_(frontal|lateral)\.jpg$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantom") / "data"
    summary = phantom.make_phantom(out, 40, image_size=SIZE, seed=3, workers=1, progress=False)
    return out, summary


def _read(out: Path) -> pd.DataFrame:
    frames = []
    for split in ("train", "valid", "test"):
        df = pd.read_csv(out / f"{split}.csv")
        df["split"] = split
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    parts = df["Path"].str.extract(PATH_RE.pattern)
    df["patient"] = parts[1]
    df["study"] = parts[1] + "/" + parts[2]
    df["view_no"] = parts[3].astype(int)
    return df


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != phantom.MANIFEST
    }


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    a = phantom.make_phantom(tmp_path / "a", 10, image_size=32, seed=7, workers=1, progress=False)
    b = phantom.make_phantom(tmp_path / "b", 10, image_size=32, seed=7, workers=2, progress=False)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert len([k for k in files_a if k.endswith(".jpg")]) == sum(a["images"].values())
    assert all(files_a[k] == files_b[k] for k in files_a)
    for key in ("patients", "studies", "images", "frontal", "lateral", "effusion_prevalence"):
        assert a[key] == b[key]


def test_another_seed_gives_another_dataset(tmp_path):
    phantom.make_phantom(tmp_path / "a", 10, image_size=32, seed=1, workers=1, progress=False)
    phantom.make_phantom(tmp_path / "b", 10, image_size=32, seed=2, workers=1, progress=False)
    assert (tmp_path / "a/train.csv").read_bytes() != (tmp_path / "b/train.csv").read_bytes()


# ---------------------------------------------------------------------------------------------
# Layout


def test_csvs_have_chexperts_exact_columns_and_paths(dataset):
    out, _ = dataset
    for split in ("train", "valid", "test"):
        header = (out / f"{split}.csv").read_text().splitlines()[0]
        # CheXpert's columns, in CheXpert's order, then the phantom's one addition.
        assert header.split(",") == list(phantom.CSV_COLUMNS) + ["Study Date"]
    assert phantom.CSV_COLUMNS[:5] == ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
    assert phantom.CSV_COLUMNS[5:] == OBSERVATIONS
    assert phantom.WRITTEN_COLUMNS == phantom.CSV_COLUMNS + ("Study Date",)
    df = _read(out)
    for path, split, kind, ap_pa in zip(df["Path"], df["split"], df["Frontal/Lateral"], df["AP/PA"]):
        m = PATH_RE.match(path)
        assert m, path
        assert m.group(1) == split
        assert m.group(5) == kind.lower()
        if kind == "Frontal":
            assert ap_pa in ("AP", "PA")
        else:
            assert kind == "Lateral" and pd.isna(ap_pa)  # CheXpert leaves it blank
        assert (out / path).is_file()


def test_images_are_greyscale_jpegs_of_the_requested_size(dataset):
    out, _ = dataset
    df = _read(out)
    for path in df["Path"][::3]:
        with Image.open(out / path) as im:
            assert im.format == "JPEG" and im.mode == "L"
            w, h = im.size
            assert w == SIZE and SIZE <= h <= round(1.25 * SIZE)
            pixels = np.asarray(im)
        assert pixels.std() > 20  # an image, not a blank


def test_labels_demographics_and_clean_evaluation_splits(dataset):
    out, _ = dataset
    df = _read(out)
    labels = df[list(phantom.OBSERVATIONS)]
    assert labels.isin([1.0, 0.0, -1.0]).to_numpy()[labels.notna().to_numpy()].all()
    held_out = df["split"] != "train"
    assert labels[held_out].notna().all().all()  # valid/test: every label given, 0 or 1
    assert labels[held_out].isin([0.0, 1.0]).all().all()
    train = labels[~held_out]
    assert (train == -1.0).any().any() and train.isna().any().any()
    assert set(df["Sex"]) <= {"Male", "Female"}
    assert df["Age"].between(18, 90).all() and (df["Age"] % 1 == 0).all()


def test_the_adapter_reads_it_and_splits_are_patient_disjoint(dataset):
    out, summary = dataset
    table = load_table("chexpert", out / "train.csv", include_siblings=True)
    assert Path(table.attrs["root"]) == out
    assert len(table) == sum(summary["images"].values())
    patients = {s: set(table.loc[table["split"] == s, "patient_id"]) for s in ("train", "valid", "test")}
    assert not patients["train"] & patients["valid"]
    assert not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]
    assert {s: len(p) for s, p in patients.items()} == {"train": 32, "valid": 4, "test": 4}
    assert summary["patients"] == {"train": 32, "valid": 4, "test": 4}
    assert set(table["view"]) == {"frontal", "lateral"}
    assert set(table["projection"]) <= {"AP", "PA", "LATERAL"}


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_split_assignment_is_about_80_10_10(n):
    splits = phantom.assign_splits(n, seed=0)
    counts = {s: splits.count(s) for s in ("train", "valid", "test")}
    assert sum(counts.values()) == n
    if n >= 10:
        assert counts["valid"] == counts["test"] == round(n / 10)
    assert counts["train"] >= n - 2 * max(1, round(n / 10))


def test_study_structure(dataset):
    out, summary = dataset
    df = _read(out)
    obs = list(phantom.OBSERVATIONS)
    studies = df.groupby("study")
    # view1, view2, ... within a study
    assert (studies["view_no"].min() == 1).all()
    assert (studies["view_no"].max() == studies.size()).all()
    assert (studies["view_no"].nunique() == studies.size()).all()
    # One report per study: identical labels (blank included) and age on all its images.
    assert (df[obs].fillna(9.0).groupby(df["study"]).nunique() == 1).all().all()
    assert (studies["Age"].nunique() == 1).all()
    per_study = studies.agg(patient=("patient", "first"), age=("Age", "first")).reset_index()
    per_study["number"] = per_study["study"].str.split("/").str[1].astype(int)
    per_study = per_study.sort_values(["patient", "number"])
    for patient, g in per_study.groupby("patient"):
        assert list(g["number"]) == list(range(1, len(g) + 1)), patient
        assert g["age"].is_monotonic_increasing, patient  # studies follow each other in time
    assert (df.groupby("patient")["Sex"].nunique() == 1).all()
    assert summary["lateral"]["train"] > 0
    assert sum(summary["frontal"].values()) > sum(summary["lateral"].values())
    kinds = studies["Frontal/Lateral"].agg(lambda v: tuple(sorted(v)))
    assert ("Frontal", "Lateral") in set(kinds)
    assert (per_study.groupby("patient").size() > 1).any()


# ---------------------------------------------------------------------------------------------
# The generative model (latent states; no images needed)


def _latent(n: int = 1200, seed: int = 0):
    for i in range(n):
        rng = phantom._patient_rng(seed, i)
        p = phantom._sample_patient(rng)
        yield p, phantom._sample_studies(rng, p), rng


def test_effusion_is_a_persistent_markov_chain_with_realistic_prevalence():
    same = flips = pos_after_pos = pos_after_neg = n_pos = n_neg = total = positive = 0
    views = {"frontal_only": 0, "with_lateral": 0, "two_frontals": 0, "lateral_only": 0}
    for _, studies, _ in _latent():
        states = [max(s.effusion) > phantom.EFFUSION_THRESHOLD for s in studies]
        total += len(states)
        positive += sum(states)
        for a, b in zip(states, states[1:]):
            n_pos += a
            n_neg += not a
            pos_after_pos += a and b
            pos_after_neg += (not a) and b
            same += a == b
            flips += a != b
        for s in studies:
            frontal = sum(v != "LATERAL" for v in s.views)
            lateral = len(s.views) - frontal
            views["lateral_only" if not frontal else "two_frontals" if frontal > 1
                  else "with_lateral" if lateral else "frontal_only"] += 1
    assert 0.2 < positive / total < 0.5
    # Persistence: positive follows positive far more often than it follows negative.
    assert pos_after_pos / n_pos > pos_after_neg / n_neg + 0.25
    assert flips > 0.1 * (same + flips)  # ... yet effusion does change between studies
    n_studies = sum(views.values())
    assert 2.3 < n_studies / 1200 < 3.3  # studies per patient, CheXpert: 2.9
    assert views["frontal_only"] > views["with_lateral"] > views["two_frontals"] > 0
    assert 0 < views["lateral_only"] < 0.1 * n_studies


def test_uncertain_labels_sit_near_the_decision_boundary():
    effusion = phantom.OBSERVATIONS.index("Pleural Effusion")
    distance = {"uncertain": [], "certain": []}
    for p, studies, rng in _latent(700, seed=1):
        for s in studies:
            label = phantom.study_labels(p, s, rng, clean=False)[effusion]
            d = abs(max(s.effusion) - phantom.EFFUSION_THRESHOLD)
            distance["uncertain" if label == -1.0 else "certain"].append(d)
    n = len(distance["uncertain"]) + len(distance["certain"])
    assert 0.01 < len(distance["uncertain"]) / n < 0.12
    assert np.median(distance["uncertain"]) < 0.5 * np.median(distance["certain"])


def test_clean_labels_are_the_thresholded_latent_state():
    for p, studies, rng in _latent(300, seed=2):
        for s in studies:
            labels = dict(zip(phantom.OBSERVATIONS, phantom.study_labels(p, s, rng, clean=True)))
            assert labels["Pleural Effusion"] == float(max(s.effusion) > phantom.EFFUSION_THRESHOLD)
            assert labels["Cardiomegaly"] == float(s.ctr > phantom.CARDIOMEGALY_THRESHOLD)
            assert labels["Support Devices"] == float(bool(s.devices))
            others = [v for k, v in labels.items() if k not in ("No Finding", "Support Devices")]
            assert labels["No Finding"] == float(not any(v == 1.0 for v in others))


# ---------------------------------------------------------------------------------------------
# Study dates


def _day(iso: str) -> int:
    return (datetime.date.fromisoformat(iso) - datetime.date(1970, 1, 1)).days


def test_study_dates_one_per_study_increasing_within_a_patient(dataset):
    out, _ = dataset
    df = _read(out)
    assert df["Study Date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert (df.groupby("study")["Study Date"].nunique() == 1).all()
    per_study = df.groupby("study").agg(patient=("patient", "first"), date=("Study Date", "first"))
    per_study["number"] = per_study.index.str.split("/").str[1].astype(int)
    per_study["day"] = per_study["date"].map(_day)
    for patient, g in per_study.sort_values("number").groupby("patient"):
        assert (np.diff(g["day"].to_numpy()) >= 1).all(), patient  # in study order, one day on
    assert per_study["day"].min() >= _day("2002-10-01")
    # Patients start on different days.
    first = per_study.sort_values("number").groupby("patient")["day"].first()
    assert first.nunique() > 0.9 * len(first)


def test_study_dates_follow_the_years_between_studies_and_the_effusion_state():
    """The gap between consecutive studies: the model's years between them plus an
    exponential number of days, mean 4 when the effusion state holds, 120 when it changed
    (rounded up: the mean of ceil(Exp(m)) is 1 / (1 - exp(-1 / m)))."""
    gaps: dict[bool, list[float]] = {True: [], False: []}
    for i, (_, studies, _) in enumerate(_latent(1500, seed=4)):
        days = phantom.study_dates(4, i, studies)
        assert len(days) == len(studies) and days == sorted(set(days))
        assert days[0] >= phantom.FIRST_DAY
        if days[-1] - days[0] <= phantom.LAST_DAY - phantom.FIRST_DAY:
            assert days[-1] <= phantom.LAST_DAY  # the sequence fits CheXpert's span
        assert days == phantom.study_dates(4, i, studies)  # seeded
        for (a, da), (b, db) in zip(zip(studies, days), zip(studies[1:], days[1:])):
            years = 365.25 * (b.age - a.age)
            assert db - da >= years
            if years == 0:
                gaps[a.effusion_state == b.effusion_state].append(db - da)
    for kept, mean in ((True, 4.0), (False, 120.0)):
        g = np.array(gaps[kept])
        expected = 1 / (1 - np.exp(-1 / mean))
        assert len(g) > 200
        assert abs(g.mean() - expected) < 4 * expected / np.sqrt(len(g)), (kept, g.mean())


def test_studies_within_30_days_share_the_effusion_label_more_often():
    """What makes ``within: {study_days: 30}`` meaningful on the phantom."""
    shared = {True: [], False: []}  # within 30 days -> same effusion label, per study pair
    for i, (_, studies, _) in enumerate(_latent(1500, seed=5)):
        days = phantom.study_dates(5, i, studies)
        positive = [max(s.effusion) > phantom.EFFUSION_THRESHOLD for s in studies]
        for a, b in itertools.combinations(range(len(studies)), 2):
            shared[days[b] - days[a] <= 30].append(positive[a] == positive[b])
    near, far = np.mean(shared[True]), np.mean(shared[False])
    assert len(shared[True]) > 1000 and len(shared[False]) > 1000
    assert near > 0.8 and far < 0.7 and near > far + 0.2  # about 0.89 against 0.60


def test_the_chexpert_adapter_fills_study_days_from_the_phantom(dataset, tmp_path):
    out, _ = dataset
    table = load_table("chexpert", out / "train.csv", include_siblings=True)
    df = _read(out).set_index("Path")
    expected = df.loc[table["path"], "Study Date"].map(_day).to_numpy(dtype=np.float64)
    assert np.array_equal(table["study_days"].to_numpy(), expected)
    number = table["study_id"].str.rsplit("study", n=1).str[1].astype(float)
    assert np.array_equal(table["study_order"].to_numpy(), number.to_numpy())  # as before
    # The same CSV without the phantom's column: CheXpert's own layout, no dates.
    plain = tmp_path / "train.csv"
    pd.read_csv(out / "train.csv", dtype=str).drop(columns=["Study Date"]).to_csv(plain, index=False)
    without = load_table("chexpert", plain)
    assert without["study_days"].isna().all()
    with_dates = table[table["split"] == "train"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        without.drop(columns=["study_days"]), with_dates.drop(columns=["study_days"]),
        check_dtype=False,
    )


# ---------------------------------------------------------------------------------------------
# The style's knobs


def _styled(style: dict, n: int = 1000, seed: int = 0) -> list[list]:
    resolved = phantom.resolve_style(style)
    out = []
    for i in range(n):
        rng = phantom._patient_rng(seed, i)
        out.append(phantom._sample_studies(rng, phantom._sample_patient(rng, resolved), resolved))
    return out


@pytest.mark.parametrize(
    "style, message",
    [
        ("nope", "unknown phantom style 'nope'; valid: original"),
        ({"study_stp": 0.2}, r"unknown phantom style field\(s\) study_stp; valid: anatomy_spread"),
        ({"study_stop": 0.01}, r"study_stop must be a number in \[0.05, 1.0\], got 0.01"),
        ({"marker": "often"}, r"marker must be a number in \[0.0, 1.0\], got 'often'"),
        ({"noise": True}, "noise must be a number"),
        ({"views": [0.5, 0.5]}, "views must be four shares"),
        ({"views": [0.5, 0.5, 0.5, -0.5]}, "views must be four shares"),
        ({"views": 0.5}, "views must be four shares"),
        ({"split_shares": [1.0, 0.0, 0.0]}, "split_shares must be three positive shares"),
        (3, "a phantom style is a name"),
    ],
)
def test_style_errors(style, message):
    with pytest.raises(MedaugError, match=message) as err:
        phantom.resolve_style(style)
    assert "\n" not in str(err.value)


def test_the_default_style_is_the_style_less_phantom(tmp_path):
    kwargs = {"image_size": 32, "seed": 2, "workers": 1, "progress": False}
    base = phantom.make_phantom(tmp_path / "none", 6, **kwargs)
    files = _files(tmp_path / "none")
    params = json.loads((tmp_path / "none" / phantom.MANIFEST).read_text())["params"]
    assert "style" not in params
    for name, style in (("named", "original"), ("empty", {}), ("object", phantom.PhantomStyle()),
                        ("fields", phantom.DEFAULT_STYLE.to_dict())):
        summary = phantom.make_phantom(tmp_path / name, 6, style=style, **kwargs)
        assert _files(tmp_path / name) == files, name
        assert {k: v for k, v in summary.items() if k not in ("out", "seconds")} == {
            k: v for k, v in base.items() if k not in ("out", "seconds")
        }
        assert json.loads((tmp_path / name / phantom.MANIFEST).read_text())["params"] == params
    # Another style is recorded, and the directory is regenerated rather than reused.
    styled = phantom.make_phantom(tmp_path / "none", 6, style={"views": [0, 0, 0, 1]}, **kwargs)
    manifest = json.loads((tmp_path / "none" / phantom.MANIFEST).read_text())
    assert manifest["params"]["style"]["views"] == [0.0, 0.0, 0.0, 1.0]
    assert sum(styled["frontal"].values()) == 0 and sum(base["frontal"].values()) > 0


def test_a_lower_study_stop_gives_more_studies_per_patient():
    """Studies per patient: min(Geometric(p), 12), mean (1 - (1 - p)^12) / p."""
    means = {}
    for stop in (0.36, 0.2):
        counts = np.array([len(s) for s in _styled({"study_stop": stop})])
        expected = (1 - (1 - stop) ** 12) / stop
        assert abs(counts.mean() - expected) < 4 * counts.std() / np.sqrt(len(counts)), stop
        assert counts.max() <= 12
        means[stop] = counts.mean()
    assert means[0.2] > means[0.36] + 1.5


def test_effusion_mixing_makes_the_label_change_more_often_between_studies():
    def changes(mixing: float) -> float:
        flips = []
        for studies in _styled({"effusion_mixing": mixing}):
            positive = [max(s.effusion) > phantom.EFFUSION_THRESHOLD for s in studies]
            flips += [a != b for a, b in zip(positive, positive[1:])]
        return float(np.mean(flips))

    persistent, mixed = changes(0.0), changes(1.0)
    assert mixed > persistent + 0.08  # about 0.38 against 0.24


@pytest.mark.parametrize("views", [(0.58, 0.30, 0.07, 0.05), (0.2, 0.5, 0.2, 0.1), (1, 0, 0, 0)])
def test_view_shares_set_the_kinds_of_studies(views):
    counts = dict.fromkeys(("frontal_only", "with_lateral", "two_frontals", "lateral_only"), 0)
    for studies in _styled({"views": list(views)}):
        for s in studies:
            frontal = sum(v != "LATERAL" for v in s.views)
            kind = ("lateral_only" if not frontal else "two_frontals" if frontal > 1
                    else "with_lateral" if len(s.views) > frontal else "frontal_only")
            counts[kind] += 1
    n = sum(counts.values())
    for share, count in zip(views, counts.values()):
        assert abs(count / n - share) < 4 * np.sqrt(share * (1 - share) / n) + 1e-9, counts


# ---------------------------------------------------------------------------------------------
# The signal is really drawn


def _basal(img: np.ndarray, lateral_view: bool) -> np.ndarray:
    """Lower lung zones of the central square (frontal: both costophrenic regions; lateral:
    the posterior sulcus)."""
    h, w = img.shape
    top = (h - w) // 2
    sq = img[top : top + w].astype(np.float64)
    rows = slice(int(0.55 * w), int(0.85 * w))
    if lateral_view:
        return sq[rows, int(0.5 * w) : int(0.78 * w)]
    return np.concatenate([sq[rows, int(0.1 * w) : int(0.35 * w)], sq[rows, int(0.65 * w) : int(0.9 * w)]], 1)


@pytest.mark.parametrize("projection", ["PA", "AP", "LATERAL"])
def test_effusion_brightens_the_lung_bases_of_the_same_film(projection):
    gains = []
    for i in range(8):
        rng = phantom._patient_rng(0, i)
        p = phantom._sample_patient(rng)
        study = phantom._sample_studies(rng, p)[0]
        means = []
        for severity in (0.0, 0.3, 0.7):
            s = dataclasses.replace(study, effusion=(severity, severity))
            draw = np.random.default_rng(11)  # same pose, exposure and noise
            if projection == "LATERAL":
                img = phantom.render_lateral(p, s, 64, 72, 64, draw)
            else:
                img = phantom.render_frontal(p, s, projection, 64, 72, 64, draw)
            means.append(_basal(img, projection == "LATERAL").mean())
        assert means[0] < means[1] < means[2]
        gains.append(means[2] - means[0])
    assert np.mean(gains) > 8  # grey levels


def test_effusion_positive_frontals_are_brighter_at_the_bases(dataset):
    """Over the dataset: the lateral basal strip, relative to the mid lung above it (which
    removes much of the patient's own density), is brighter in effusion-positive frontals
    on the brighter of the two sides (effusions are often one-sided)."""
    out, _ = dataset
    df = _read(out)
    frontal = df[(df["Frontal/Lateral"] == "Frontal") & (df["Pleural Effusion"] != -1.0)]

    def statistic(path: str) -> float:
        img = np.asarray(Image.open(out / path), dtype=np.float64)
        h, w = img.shape
        sq = img[(h - w) // 2 : (h - w) // 2 + w]  # the central square
        base, mid = slice(int(0.55 * w), int(0.75 * w)), slice(int(0.3 * w), int(0.5 * w))
        sides = [slice(int(0.1 * w), int(0.25 * w)), slice(int(0.75 * w), int(0.9 * w))]
        return max(sq[base, c].mean() - sq[mid, c].mean() for c in sides)

    stat = np.array([statistic(p) for p in frontal["Path"]])
    pos = (frontal["Pleural Effusion"] == 1.0).to_numpy()
    assert 10 <= pos.sum() <= len(pos) - 10
    diff = stat[pos].mean() - stat[~pos].mean()
    se = np.sqrt(stat[pos].var(ddof=1) / pos.sum() + stat[~pos].var(ddof=1) / (~pos).sum())
    assert diff / se > 3.0  # Welch t statistic


def test_images_of_one_patient_resemble_each_other_more_than_other_patients(dataset):
    out, _ = dataset
    df = _read(out)
    frontal = df[(df["Frontal/Lateral"] == "Frontal") & (df["split"] == "train")]

    def vector(path: str) -> np.ndarray:
        img = np.asarray(Image.open(out / path), dtype=np.float64)
        h, w = img.shape
        v = img[(h - w) // 2 : (h - w) // 2 + w].ravel()
        return (v - v.mean()) / v.std()

    vecs = np.stack([vector(p) for p in frontal["Path"]])
    corr = vecs @ vecs.T / vecs.shape[1]  # N x N Pearson correlations
    patient = frontal["patient"].to_numpy()
    same = patient[:, None] == patient[None, :]
    off_diag = ~np.eye(len(patient), dtype=bool)
    assert (same & off_diag).sum() > 20
    assert corr[same & off_diag].mean() > corr[~same].mean() + 0.05


# ---------------------------------------------------------------------------------------------
# Reuse, errors, command, figure


def test_reuse_regenerate_and_refuse(tmp_path):
    out = tmp_path / "p"
    first = phantom.make_phantom(out, 5, image_size=24, seed=0, workers=1, progress=False)
    stamp = (out / "train.csv").stat().st_mtime_ns
    again = phantom.make_phantom(out, 5, image_size=24, seed=0, workers=1, progress=False)
    assert again == first and (out / "train.csv").stat().st_mtime_ns == stamp
    other = phantom.make_phantom(out, 6, image_size=24, seed=0, workers=1, progress=False)
    assert sum(other["patients"].values()) == 6
    numbers = {m.group(2) for p in _read(out)["Path"] if (m := PATH_RE.match(p))}
    assert len(numbers) == 6  # regenerated: no leftover patients of the previous phantom
    # What an interrupted run leaves: its claim (an incomplete manifest) and some images.
    (out / phantom.MANIFEST).write_text(json.dumps({"params": {}, "complete": False}))
    (out / "train.csv").unlink()
    (out / "train/patient00099/study1").mkdir(parents=True)
    (out / "train/patient00099/study1/view1_frontal.jpg").write_bytes(b"half")
    redone = phantom.make_phantom(out, 6, image_size=24, seed=0, workers=1, progress=False)
    assert redone["images"] == other["images"] and (out / "train.csv").exists()
    assert not (out / "train/patient00099").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MedaugError, match="does not hold a phantom"):
        phantom.make_phantom(foreign, 5, progress=False)
    with pytest.raises(MedaugError, match="at least 1 patient"):
        phantom.make_phantom(tmp_path / "x", 0, progress=False)
    with pytest.raises(MedaugError, match="at least 16"):
        phantom.make_phantom(tmp_path / "x", 3, image_size=8, progress=False)


def test_phantom_command_prints_the_summary_and_next_step(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "phantom", str(out), "--patients", "6", "--image-size", "24",
                 "--seed", "1", "--workers", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "patients" in text and "lateral" in text and "effusion+" in text
    assert f"medaug data cache --dataset chexpert --csv {out / 'train.csv'}" in text
    assert re.search(r"^total\s+6\s", text, re.M)
    assert main(["data", "phantom", str(tmp_path / "y"), "--patients", "0", "--quiet"]) == 2


def test_phantom_command_style(tmp_path, capsys):
    argv = ["data", "phantom", "--patients", "8", "--image-size", "24", "--seed", "1",
            "--workers", "1", "--quiet"]
    styled = tmp_path / "styled"
    assert main(argv + [str(styled), "--style", "{study_stop: 0.5, marker: 0.2}",
                        "--style-set", "views=[1, 0, 0, 0]", "study_stop=0.25"]) == 0
    text = capsys.readouterr().out
    # --style-set applies on top of --style; the summary names what differs from the original.
    assert "style: marker=0.2, views=[1.0, 0.0, 0.0, 0.0], study_stop=0.25\n" in text
    params = json.loads((styled / phantom.MANIFEST).read_text())["params"]
    expected = phantom.PhantomStyle(marker=0.2, views=(1, 0, 0, 0), study_stop=0.25)
    assert params["style"] == expected.to_dict()
    assert re.search(r"^total\s+8\s+\d+\s+\d+\s+\d+\s+0\s", text, re.M)  # no lateral films
    # The original style by name: the style-less phantom, and no style line.
    assert main(argv + [str(tmp_path / "named"), "--style", "original"]) == 0
    assert main(argv + [str(tmp_path / "plain")]) == 0
    assert "style:" not in capsys.readouterr().out
    assert _files(tmp_path / "named") == _files(tmp_path / "plain")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--style", "nope"], "unknown phantom style 'nope'"),
        (["--style", "{study_stp: 1}"], r"unknown phantom style field\(s\) study_stp"),
        (["--style", "{study_stop: [1"], r"--style '\{study_stop: \[1' is not a name or a YAML mapping"),
        (["--style", "[1, 2]"], "--style must be a style name or a mapping of its fields"),
        (["--style-set", "study_stop"], "--style-set 'study_stop' must look like FIELD=VALUE"),
        (["--style-set", "study_stop=5"], r"study_stop must be a number in \[0.05, 1.0\], got 5"),
        (["--style-set", "marker=often"], "marker must be a number .* got 'often'"),
        (["--style-set", "views=[0.5, 0.5]"], "views must be four shares"),
    ],
)
def test_phantom_command_style_errors(tmp_path, capsys, options, message):
    out = tmp_path / "never"
    assert main(["data", "phantom", str(out), "--patients", "3", "--quiet", *options]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()  # refused before any work


def test_plot_samples_writes_a_figure(dataset, tmp_path):
    out, _ = dataset
    png = phantom.plot_samples(out, tmp_path / "samples.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400
    with pytest.raises(MedaugError, match="no phantom"):
        phantom.plot_samples(tmp_path / "nothing", tmp_path / "x.png")
