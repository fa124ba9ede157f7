"""Dataset adapters against hand-written files in each real format (tests/data/fixtures).

Expected rows are written out by hand from the fixture files; an observation not listed for
a row is expected blank (NaN).
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medaug.data import DATASETS, load_table, read_table, resolve_root, write_table
from medaug.data.schema import OBSERVATIONS, TABLE_COLUMNS
from medaug.errors import MedaugError

FIXTURES = Path(__file__).parent / "fixtures"
CHEXPERT = FIXTURES / "chexpert" / "CheXpert-v1.0-small"
MIMIC = FIXTURES / "mimic"
NIH = FIXTURES / "nih"
PADCHEST = FIXTURES / "padchest" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
GENERIC = FIXTURES / "generic"
GENERIC_MAP = {
    "path": "file",
    "patient_id": "subject",
    "study_id": "visit",
    "view": "position",
    "split": "partition",
    "sex": "gender",
    "age": "years",
    "Cardiomegaly": "cardio",
}
ID = ("image_id", "path", "patient_id", "study_id", "view", "projection", "split")


def _ids(table: pd.DataFrame) -> list[tuple[str, ...]]:
    return [tuple(r) for r in table.loc[:, list(ID)].itertuples(index=False)]


def _assert_labels(table: pd.DataFrame, expected: list[dict[str, float]]) -> None:
    """Each row's listed observations hold these values; every other observation is NaN."""
    assert len(table) == len(expected)
    for i, labels in enumerate(expected):
        for obs in OBSERVATIONS:
            got = table[obs].iat[i]
            if obs in labels:
                assert got == labels[obs], (i, obs, got)
            else:
                assert np.isnan(got), (i, obs, got)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- CheXpert

P = "CheXpert-v1.0-small/train/"
CHEXPERT_TRAIN_IDS = [
    (P + "patient00001/study1/view1_frontal.jpg", "patient00001", "patient00001/study1",
     "frontal", "AP"),
    (P + "patient00002/study2/view1_frontal.jpg", "patient00002", "patient00002/study2",
     "frontal", "AP"),
    # study12 stays study12: it is not study2 of the same patient.
    (P + "patient00002/study12/view1_frontal.jpg", "patient00002", "patient00002/study12",
     "frontal", "PA"),
    # Blank AP/PA on a lateral image -> LATERAL.
    (P + "patient00002/study12/view2_lateral.jpg", "patient00002", "patient00002/study12",
     "lateral", "LATERAL"),
    (P + "patient00003/study1/view1_frontal.jpg", "patient00003", "patient00003/study1",
     "frontal", "AP"),
    # "FRONTAL" / "lateral": the Frontal/Lateral column is read without regard to case.
    (P + "patient00004/study1/view1_frontal.jpg", "patient00004", "patient00004/study1",
     "frontal", "PA"),
    (P + "patient00004/study1/view2_lateral.jpg", "patient00004", "patient00004/study1",
     "lateral", "LL"),
    # Blank AP/PA on a frontal image, and RL, are unknown.
    (P + "patient00005/study3/view1_frontal.jpg", "patient00005", "patient00005/study3",
     "frontal", "unknown"),
    (P + "patient00005/study3/view2_lateral.jpg", "patient00005", "patient00005/study3",
     "lateral", "unknown"),
]
CHEXPERT_TRAIN_LABELS = [
    {"No Finding": 1.0, "Pneumothorax": 0.0, "Support Devices": 1.0},
    {"Cardiomegaly": -1.0, "Lung Opacity": 1.0, "Edema": -1.0, "Consolidation": -1.0,
     "Atelectasis": -1.0, "Pleural Effusion": -1.0, "Fracture": 1.0},
    {"Lung Opacity": 1.0, "Consolidation": -1.0, "Pleural Effusion": 1.0},
    {"Lung Opacity": 1.0, "Consolidation": -1.0, "Pleural Effusion": 1.0},
    {"Edema": 1.0, "Pneumothorax": 0.0, "Pleural Effusion": 0.0},
    {"No Finding": 1.0, "Enlarged Cardiomediastinum": 0.0, "Pleural Effusion": 0.0},
    {"No Finding": 1.0, "Enlarged Cardiomediastinum": 0.0, "Pleural Effusion": 0.0},
    {"Support Devices": 1.0},
    {"Support Devices": 1.0},
]


def test_chexpert_train_rows():
    table = load_table("chexpert", CHEXPERT / "train.csv")
    assert tuple(table.columns) == TABLE_COLUMNS
    assert _ids(table) == [(p, p, pat, st, v, pr, "train") for p, pat, st, v, pr in
                           CHEXPERT_TRAIN_IDS]
    _assert_labels(table, CHEXPERT_TRAIN_LABELS)
    assert table["sex"].tolist() == ["Female"] * 4 + ["Male", None, None, "Male", "Male"]
    assert table["age"].tolist() == [68.0, 87.0, 83.0, 83.0, 41.0, 20.0, 20.0, 55.0, 55.0]
    assert table.attrs == {"root": str(CHEXPERT), "dataset": "chexpert"}
    # No dates in CheXpert: the study number is the order (12 for study12, not 2).
    assert table["study_order"].tolist() == [1.0, 2.0, 12.0, 12.0, 1.0, 1.0, 1.0, 3.0, 3.0]
    assert table["study_days"].isna().all()


def test_chexpert_siblings_add_valid_and_test():
    table = load_table("chexpert", CHEXPERT / "train.csv", include_siblings=True)
    assert table["split"].tolist() == ["train"] * 9 + ["valid"] * 2 + ["test"]
    assert _ids(table)[9:] == [
        ("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",) * 2
        + ("patient64541", "patient64541/study1", "frontal", "AP", "valid"),
        ("CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg",) * 2
        + ("patient64542", "patient64542/study1", "lateral", "LATERAL", "valid"),
        ("CheXpert-v1.0-small/test/patient64741/study1/view1_frontal.jpg",) * 2
        + ("patient64741", "patient64741/study1", "frontal", "PA", "test"),
    ]
    _assert_labels(table.iloc[9:10], [
        {o: 0.0 for o in OBSERVATIONS} | {"Enlarged Cardiomediastinum": 1.0,
                                          "Cardiomegaly": 1.0, "Lung Opacity": 1.0}
    ])
    # Starting from valid.csv gives the same table (order train, valid, test).
    from_valid = load_table("chexpert", CHEXPERT / "valid.csv", include_siblings=True)
    pd.testing.assert_frame_equal(from_valid, table)
    assert load_table("chexpert", CHEXPERT / "valid.csv")["split"].tolist() == ["valid"] * 2


def test_chexpert_optional_columns(tmp_path):
    """Without Frontal/Lateral, AP/PA, Sex and Age: view from the file name, defaults."""
    src = pd.read_csv(CHEXPERT / "train.csv")
    src.drop(columns=["Frontal/Lateral", "AP/PA", "Sex", "Age"]).to_csv(
        tmp_path / "train.csv", index=False
    )
    table = load_table("chexpert", tmp_path / "train.csv")
    assert table["view"].tolist() == [r[3] for r in CHEXPERT_TRAIN_IDS]
    assert table["projection"].tolist() == [
        "LATERAL" if r[3] == "lateral" else "unknown" for r in CHEXPERT_TRAIN_IDS
    ]
    assert table["sex"].isna().all() and table["age"].isna().all()


def _chexpert_csv(path: Path, columns: str, rows: list[str]) -> Path:
    """A CheXpert CSV: ``columns``, then the 14 observations; each row ends with its first
    observation's value (or nothing), the other 13 are blank."""
    blanks = "," * (len(OBSERVATIONS) - 1)
    lines = [f"{columns},{','.join(OBSERVATIONS)}"] + [row + blanks for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_chexpert_short_paths_and_blank_view(tmp_path):
    """Paths with a short prefix (the phantom's ``train/patient.../...``) or none at all."""
    csv = _chexpert_csv(tmp_path / "train.csv", "Path,Sex,Age,Frontal/Lateral,AP/PA", [
        "train/patient00001/study1/view1_frontal.jpg,Male,30,,PA,1.0",
        "train/patient00001/study1/view2_lateral.jpg,Male,30,,,",
        "patient00002/study10/view1_frontal.jpg,Female,40,Frontal,AP,",
    ])
    table = load_table("chexpert", csv)
    assert _ids(table) == [
        ("train/patient00001/study1/view1_frontal.jpg",) * 2
        + ("patient00001", "patient00001/study1", "frontal", "PA", "train"),
        ("train/patient00001/study1/view2_lateral.jpg",) * 2
        + ("patient00001", "patient00001/study1", "lateral", "LATERAL", "train"),
        ("patient00002/study10/view1_frontal.jpg",) * 2
        + ("patient00002", "patient00002/study10", "frontal", "AP", "train"),
    ]


def test_chexpert_study_date_column(tmp_path):
    """The phantom's optional ``Study Date`` (YYYYMMDD or ISO) fills study_days, the earliest
    of a study's images; CheXpert's own files have none (test_chexpert_train_rows)."""
    csv = _chexpert_csv(tmp_path / "train.csv", "Path,Frontal/Lateral,AP/PA,Study Date", [
        "train/patient00001/study1/view1_frontal.jpg,Frontal,PA,2005-03-01,",
        "train/patient00001/study1/view2_lateral.jpg,Lateral,,20050302,",
        "train/patient00001/study2/view1_frontal.jpg,Frontal,AP,2005-04-01,",
        "train/patient00002/study1/view1_frontal.jpg,Frontal,AP,,",
    ])
    table = load_table("chexpert", csv)
    first, later = _days(dt.date(2005, 3, 1)), _days(dt.date(2005, 4, 1))
    assert later - first == 31
    assert table["study_days"].tolist()[:3] == [first, first, later]
    assert np.isnan(table["study_days"].iat[3])  # a blank date: unknown
    assert table["study_order"].tolist() == [1.0, 1.0, 2.0, 1.0]
    csv.write_text(csv.read_text().replace("2005-04-01", "April 1st"))
    with pytest.raises(MedaugError) as err:
        load_table("chexpert", csv)
    assert "column 'Study Date' has 1 value(s) that are not YYYYMMDD or ISO dates, e.g. " \
        "['April 1st']" in _one_line(err)


def test_resolve_root(chexpert_copy):
    folder = chexpert_copy.parent  # <tmp>/CheXpert-v1.0-small
    first = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    # No images anywhere: the CSV's folder (metadata-only work must not need images).
    assert resolve_root(chexpert_copy, first) == folder
    assert load_table("chexpert", chexpert_copy).attrs["root"] == str(folder)
    # CheXpert's own layout: paths start with the dataset folder, so the root is its parent.
    image = folder.parent / first
    image.parent.mkdir(parents=True)
    image.touch()
    assert resolve_root(chexpert_copy, first) == folder.parent
    assert load_table("chexpert", chexpert_copy).attrs["root"] == str(folder.parent)
    # An explicit root wins, and must exist.
    assert resolve_root(chexpert_copy, first, folder) == folder
    assert load_table("chexpert", chexpert_copy, root=folder).attrs["root"] == str(folder)
    with pytest.raises(MedaugError) as err:
        load_table("chexpert", chexpert_copy, root=folder / "nowhere")
    assert _one_line(err) == f"image root {folder / 'nowhere'} does not exist"
    assert resolve_root(folder, None) == folder  # a folder stands for itself


def test_chexpert_unparsable_paths(tmp_path):
    src = pd.read_csv(CHEXPERT / "train.csv")
    src.loc[1, "Path"] = "CheXpert-v1.0-small/train/patient00002/view1_frontal.jpg"
    src.loc[4, "Path"] = "CheXpert-v1.0-small/train/patient3/studyX/view1_frontal.jpg"
    src.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(MedaugError) as err:
        load_table("chexpert", tmp_path / "train.csv")
    message = _one_line(err)
    assert message.startswith(f"{tmp_path / 'train.csv'}: 2 path(s) do not look like")
    assert "patient00002/view1_frontal.jpg" in message and "studyX" in message


def test_chexpert_missing_columns(tmp_path):
    src = pd.read_csv(CHEXPERT / "train.csv")
    src.drop(columns=["Path", "Pleural Effusion"]).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(MedaugError) as err:
        load_table("chexpert", tmp_path / "train.csv")
    assert _one_line(err).startswith(
        f"{tmp_path / 'train.csv'}: missing column(s) 'Path', 'Pleural Effusion'"
    )


def test_chexpert_duplicates_and_bad_labels(tmp_path):
    src = pd.read_csv(CHEXPERT / "train.csv")
    pd.concat([src, src.iloc[[0]]]).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(MedaugError, match="2 rows share a duplicate image_id") as err:
        load_table("chexpert", tmp_path / "train.csv")
    _one_line(err)
    src.loc[0, "Edema"] = 2.0
    src.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(MedaugError, match=r"observation 'Edema' has value\(s\) \['2.0'\]"):
        load_table("chexpert", tmp_path / "train.csv")


# --------------------------------------------------------------------------- MIMIC-CXR

MIMIC_IDS = [
    ("0a1b2c3d-11111111-22222222-33333333-44444444", "10000032", "50414267", "frontal", "PA",
     "train"),
    ("5e6f7a8b-55555555-66666666-77777777-88888888", "10000032", "50414267", "lateral",
     "LATERAL", "train"),
    ("9c0d1e2f-99999999-aaaaaaaa-bbbbbbbb-cccccccc", "10000032", "53189527", "frontal", "AP",
     "train"),
    ("3a4b5c6d-dddddddd-eeeeeeee-ffffffff-00000000", "11000011", "57375967", "frontal", "AP",
     "valid"),
    ("7e8f9a0b-12121212-34343434-56565656-78787878", "11000011", "57375967", "lateral", "LL",
     "valid"),
    # AP AXIAL and a blank ViewPosition are neither frontal nor lateral.
    ("1c2d3e4f-9a9a9a9a-bcbcbcbc-dedededede-f0f0f0f0", "11000011", "57375967", "other",
     "unknown", "valid"),
    ("6a7b8c9d-13579bdf-2468ace0-11223344-55667788", "19999733", "52341872", "other",
     "unknown", "test"),
]
STUDY_57375967 = {"Edema": 0.0, "Lung Opacity": 1.0, "Pleural Effusion": 1.0,
                  "Pneumonia": -1.0, "Support Devices": 1.0}
MIMIC_LABELS = [
    {"No Finding": 1.0},
    {"No Finding": 1.0},
    {"Atelectasis": 1.0, "Pleural Effusion": -1.0, "Pneumothorax": 0.0},
    STUDY_57375967,
    STUDY_57375967,
    STUDY_57375967,
    {},  # a study without a row in the label file: blank labels
]


def _expected_mimic() -> list[tuple[str, ...]]:
    return [
        (d, f"files/p{s[:2]}/p{s}/s{st}/{d}.jpg", s, f"{s}/{st}", v, p, sp)
        for d, s, st, v, p, sp in MIMIC_IDS
    ]


@pytest.mark.parametrize("arg", ["folder", "metadata"])
def test_mimic_rows(arg):
    csv = MIMIC if arg == "folder" else MIMIC / "mimic-cxr-2.0.0-metadata.csv"
    table = load_table("mimic", csv)
    assert _ids(table) == _expected_mimic()
    assert _ids(table)[0][1] == (
        "files/p10/p10000032/s50414267/0a1b2c3d-11111111-22222222-33333333-44444444.jpg"
    )
    _assert_labels(table, MIMIC_LABELS)
    assert table["sex"].isna().all() and table["age"].isna().all()
    assert table.attrs["root"] == str(MIMIC)
    np.testing.assert_allclose(table["study_days"].to_numpy(), MIMIC_DAYS, rtol=0, atol=1e-9)
    assert table["study_order"].isna().all()


def _days(date: dt.date, hours: int = 0, minutes: int = 0, seconds: float = 0.0) -> float:
    """Days since 1970-01-01, by the standard library."""
    return (date - dt.date(1970, 1, 1)).days + (hours * 3600 + minutes * 60 + seconds) / 86400


# StudyDate + StudyTime of each image of the metadata fixture, read off the file.
MIMIC_DAYS = [
    _days(dt.date(2180, 5, 6), 21, 30, 14.531),
    _days(dt.date(2180, 5, 6), 21, 30, 14.531),
    _days(dt.date(2180, 6, 26), 16, 55, 0.312),
    _days(dt.date(2153, 6, 16), 10, 0, 23.0),
    _days(dt.date(2153, 6, 16), 10, 0, 23.0),
    _days(dt.date(2153, 6, 16), 10, 0, 23.0),
    _days(dt.date(2152, 7, 8), 22, 49, 36.953),
]


def test_mimic_study_time_details(tmp_path):
    """The earliest image of a study dates it; a blank time leaves the date; no date columns,
    no time; a bad date is one line naming it."""
    folder = _mimic_copy(tmp_path)
    meta = folder / "mimic-cxr-2.0.0-metadata.csv"
    src = pd.read_csv(meta, dtype=str)
    src.loc[1, "StudyTime"] = "203000"  # the lateral of study 50414267 an hour earlier
    src.loc[6, "StudyTime"] = None  # 19999733's only image: no time
    src.to_csv(meta, index=False)
    days = load_table("mimic", folder)["study_days"].to_numpy()
    earliest = _days(dt.date(2180, 5, 6), 20, 30, 0.0)
    np.testing.assert_allclose(days, [earliest, earliest] + MIMIC_DAYS[2:6]
                               + [_days(dt.date(2152, 7, 8))], rtol=0, atol=1e-9)
    src.loc[3, "StudyDate"] = "21531316"
    src.to_csv(meta, index=False)
    with pytest.raises(MedaugError) as err:
        load_table("mimic", folder)
    assert _one_line(err) == (f"{meta}: column 'StudyDate' has 1 value(s) that are not "
                              "YYYYMMDD or ISO dates, e.g. ['21531316']")
    src.loc[3, "StudyDate"] = "21530616"
    src.loc[3, "StudyTime"] = "256000"
    src.to_csv(meta, index=False)
    with pytest.raises(MedaugError, match=r"column 'StudyTime' has 1 value\(s\) that are not "
                                          r"HHMMSS times, e.g. \['256000'\]"):
        load_table("mimic", folder)
    src.drop(columns=["StudyDate", "StudyTime"]).to_csv(meta, index=False)
    assert load_table("mimic", folder)["study_days"].isna().all()


def test_mimic_gzipped(tmp_path):
    for f in MIMIC.iterdir():
        with open(f, "rb") as src, gzip.open(tmp_path / (f.name + ".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert _ids(load_table("mimic", tmp_path)) == _expected_mimic()


def _mimic_copy(tmp_path: Path) -> Path:
    shutil.copytree(MIMIC, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_mimic_errors(tmp_path):
    folder = _mimic_copy(tmp_path)
    split = folder / "mimic-cxr-2.0.0-split.csv"
    lines = split.read_text().splitlines()
    split.write_text("\n".join(lines[:-1]) + "\n")  # the test image loses its split row
    with pytest.raises(MedaugError) as err:
        load_table("mimic", folder)
    assert _one_line(err).startswith(f"{split}: 1 image(s) of mimic-cxr-2.0.0-metadata.csv "
                                     "have no split row, e.g. ['6a7b8c9d-")
    split.write_text("\n".join(lines[:-1] + [lines[-1].replace(",test", ",holdout")]) + "\n")
    with pytest.raises(MedaugError, match=r"split value\(s\) \['holdout'\] not understood"):
        load_table("mimic", folder)
    split.unlink()
    with pytest.raises(MedaugError) as err:
        load_table("mimic", folder)
    assert _one_line(err) == (
        f"MIMIC-CXR folder {folder} has no mimic-cxr-2.0.0-split.csv (or .csv.gz)"
    )


def test_mimic_label_file_problems(tmp_path):
    folder = _mimic_copy(tmp_path)
    labels = folder / "mimic-cxr-2.0.0-chexpert.csv"
    text = labels.read_text()
    labels.write_text(text + text.splitlines()[1] + "\n")
    with pytest.raises(MedaugError, match=r"2 rows repeat a study, e.g. \['10000032/50414267'"):
        load_table("mimic", folder)
    pd.read_csv(labels).drop(columns=["Edema"]).to_csv(labels, index=False)
    with pytest.raises(MedaugError) as err:
        load_table("mimic", folder)
    assert _one_line(err).startswith(f"{labels}: missing column(s) 'Edema'")
    with pytest.raises(MedaugError, match="MIMIC-CXR metadata CSV .*nothing.csv does not exist"):
        load_table("mimic", folder / "nothing.csv")


# --------------------------------------------------------------------------- NIH

NIH_IDS = [
    ("00000001_000.png", "1", "1/0", "PA", "train"),
    ("00000001_001.png", "1", "1/1", "PA", "train"),
    ("00000001_002.png", "1", "1/2", "PA", "train"),
    ("00000002_000.png", "2", "2/0", "PA", "train"),
    ("00000003_000.png", "3", "3/0", "PA", "test"),
    ("00000003_001.png", "3", "3/1", "AP", "test"),
    ("00000004_000.png", "4", "4/0", "AP", "train"),
]
# Observations NIH annotates are 0 unless listed; the three it does not annotate stay NaN.
NIH_ZERO = {o: 0.0 for o in OBSERVATIONS
            if o not in ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")}
NIH_LABELS = [
    NIH_ZERO | {"Cardiomegaly": 1.0},
    NIH_ZERO | {"Cardiomegaly": 1.0},  # Emphysema has no CheXpert counterpart
    NIH_ZERO | {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0},
    NIH_ZERO | {"No Finding": 1.0},
    NIH_ZERO,  # Hernia alone: no mapped finding, and not "No Finding"
    NIH_ZERO | {"Pleural Effusion": 1.0, "Lung Opacity": 1.0, "Lung Lesion": 1.0,
                "Pleural Other": 1.0},
    NIH_ZERO | {"Lung Lesion": 1.0},
]


def test_nih_rows():
    table = load_table("nih", NIH / "Data_Entry_2017.csv")
    assert _ids(table) == [
        (img, f"images/{img}", pat, st, "frontal", proj, sp) for img, pat, st, proj, sp in NIH_IDS
    ]
    _assert_labels(table, NIH_LABELS)
    assert table["sex"].tolist() == ["Male"] * 4 + ["Female"] * 2 + ["Male"]
    assert table["age"].tolist() == [58.0, 58.0, 58.0, 81.0, 81.0, 74.0, 82.0]
    # No dates in NIH: the follow-up number is the order.
    assert table["study_order"].tolist() == [0.0, 1.0, 2.0, 0.0, 0.0, 1.0, 0.0]
    assert table["study_days"].isna().all()


def test_nih_time_column_checked(tmp_path):
    src = pd.read_csv(NIH / "Data_Entry_2017.csv", dtype=str)
    src.loc[2, "Follow-up #"] = "2b"
    src.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.raises(MedaugError) as err:
        load_table("nih", tmp_path / "Data_Entry_2017.csv")
    assert _one_line(err) == (f"{tmp_path / 'Data_Entry_2017.csv'}: column 'study_order' has "
                              "value(s) ['2b']; allowed: a whole number >= 0 or blank")


def test_nih_without_lists_and_old_ages(tmp_path):
    src = pd.read_csv(NIH / "Data_Entry_2017.csv", dtype=str)
    src["Patient Age"] = ["058Y", "058Y", "058Y", "006M", "081Y", "74", "014D"]
    src.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    table = load_table("nih", tmp_path / "Data_Entry_2017.csv")
    assert table["split"].tolist() == ["train"] * 7
    np.testing.assert_allclose(
        table["age"].to_numpy(), [58, 58, 58, 0.5, 81, 74, 14 / 365.25]
    )


def test_nih_list_and_label_errors(tmp_path):
    shutil.copytree(NIH, tmp_path, dirs_exist_ok=True)
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n")
    with pytest.raises(MedaugError) as err:
        load_table("nih", tmp_path / "Data_Entry_2017.csv")
    assert "4 image(s) are in neither of train_val_list.txt and test_list.txt" in _one_line(err)
    (tmp_path / "train_val_list.txt").unlink()
    src = pd.read_csv(NIH / "Data_Entry_2017.csv", dtype=str)
    src.loc[2, "Finding Labels"] = "Cardiomegaly|Efusion"
    src.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.raises(MedaugError) as err:
        load_table("nih", tmp_path / "Data_Entry_2017.csv")
    assert "unknown finding name(s) ['Efusion']" in _one_line(err)
    src.drop(columns=["Follow-up #"]).to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.raises(MedaugError, match=r"missing column\(s\) 'Follow-up #'"):
        load_table("nih", tmp_path / "Data_Entry_2017.csv")


# --------------------------------------------------------------------------- PadChest

P1 = "839860488694292331637988235681460987"
P2 = "185566986995853153213227155154455133"
P3 = "24166347718413880925262008426011063"
# The fixture's rows without the EXCLUDE (row 5) and UNK (row 6) images:
# ImageDir/ImageID, patient, StudyID, view, projection.
PADCHEST_IDS = [
    ("0/20536686640136348236148679891455886468_k6ga29.png", P1,
     "20536686640136348236148679891455886468", "frontal", "PA"),
    ("0/135803415504923515076821959678074435083_fzis7d.png", P1,
     "20536686640136348236148679891455886468", "lateral", "LATERAL"),  # L
    ("3/313572750430997347502932654319389875966_x46bvq.png", P1,
     "36195633634768302398034924683413566312", "frontal", "AP"),  # AP_horizontal
    ("12/4016437458513340291468637937929120012_8n5kjk.png", P2,
     "202707585574862618064495094007005052", "frontal", "AP"),
    ("12/99711289932217463113137290434010839563_f4a1lx.png", P2,
     "202707585574862618064495094007005052", "other", "unknown"),  # COSTAL
    ("54/216840111366964012989926673512011082111304564_00-127-130.png", P3,
     "216840111366964012819207061112010314131608187", "frontal", "PA"),
    ("54/216840111366964013076187734852011178154626671_00-145-086.png", P3,
     "216840111366964013076187734852011178154626672", "frontal", "PA"),
    ("54/216840111366964013686042548532013208193054515_02-026-007.png", P3,
     "216840111366964013686042548532013208193054516", "frontal", "PA"),
]
# Every observation is 0 on a labelled row unless one of its findings is listed.
PC_ZERO = {o: 0.0 for o in OBSERVATIONS}
PADCHEST_LABELS = [
    PC_ZERO | {"Cardiomegaly": 1.0},  # aortic atheromatosis stands for no observation
    PC_ZERO | {"Cardiomegaly": 1.0},
    # pleural effusion, NSG tube and hydropneumothorax, over two lines of the file
    PC_ZERO | {"Pleural Effusion": 1.0, "Support Devices": 1.0, "Pneumothorax": 1.0},
    PC_ZERO | {"No Finding": 1.0},  # normal
    PC_ZERO | {"Fracture": 1.0},  # rib fracture, callus rib fracture
    {},  # ['exclude']: a report PadChest could not label
    {},  # []: no labels
    PC_ZERO | {"Pleural Other": 1.0},  # apical pleural thickening; kidney stone unknown
]


def test_padchest_rows():
    table = load_table("padchest", PADCHEST)
    assert _ids(table) == [
        (path.split("/")[1], path, patient, f"{patient}/{study}", view, projection, "train")
        for path, patient, study, view, projection in PADCHEST_IDS
    ]
    _assert_labels(table, PADCHEST_LABELS)
    assert table["sex"].tolist() == ["Female"] * 3 + ["Male"] * 2 + ["Female"] * 2 + [None]
    # The study's year minus the birth year; no birth year for P2.
    np.testing.assert_array_equal(table["age"].to_numpy(),
                                  [78, 78, 80, np.nan, np.nan, 50, 50, 51])
    np.testing.assert_array_equal(table["study_days"].to_numpy(), [
        _days(dt.date(2008, 10, 3)), _days(dt.date(2008, 10, 3)), _days(dt.date(2010, 2, 17)),
        _days(dt.date(2015, 3, 27)), _days(dt.date(2015, 3, 27)), _days(dt.date(2012, 7, 12)),
        _days(dt.date(2012, 10, 1)), _days(dt.date(2013, 7, 26)),
    ])
    assert table["study_order"].isna().all()
    assert table.attrs["notes"] == [
        "left out 2 of 10 images by Projection: EXCLUDE 1, UNK 1",
        "ignored finding name(s) outside PadChest's vocabulary: 'kidney stone' (1)",
    ]


def test_padchest_problems(tmp_path):
    text = PADCHEST.read_text()
    csv = tmp_path / PADCHEST.name
    csv.write_text(text.replace(",COSTAL,", ",OBLIQUE,").replace(",UNK,", ",oblique,"))
    with pytest.raises(MedaugError) as err:
        load_table("padchest", csv)
    assert _one_line(err) == (
        f"{csv}: column 'Projection' has value(s) outside PadChest's: 'OBLIQUE' (1), "
        "'oblique' (1); known: PA, L, AP, AP_horizontal, COSTAL, EXCLUDE, UNK"
    )
    csv.write_text(text.replace('"[\'normal\']"', "normal"))
    with pytest.raises(MedaugError) as err:
        load_table("padchest", csv)
    assert _one_line(err) == (
        f"{csv}: 1 'Labels' value(s) are not a list of quoted findings like "
        "['pleural effusion'], e.g. ['normal']"
    )
    pd.read_csv(PADCHEST).drop(columns=["StudyID", "Labels"]).to_csv(csv, index=False)
    with pytest.raises(MedaugError) as err:
        load_table("padchest", csv)
    assert _one_line(err).startswith(f"{csv}: missing column(s) 'StudyID', 'Labels'; found: ")


def test_padchest_label_lists():
    from medaug.data.padchest import parse_label_list

    assert parse_label_list("['pleural effusion', 'cardiomegaly']") == [
        "pleural effusion", "cardiomegaly"]
    # Items as written (blanks are dealt with when they are looked up), either quote.
    assert parse_label_list('[" pleural  effusion ",\n \'\', "NSG tube"]') == [
        " pleural  effusion ", "", "NSG tube"]
    assert parse_label_list(" [] ") == []
    for bad in ("pleural effusion", "['a', b]", "['a'", "['a', 'b]", "['a'] x",
                "[" + "'a'     " * 30 + "x"):  # an ambiguous pattern backtracks for ages here
        assert parse_label_list(bad) is None, bad


def test_padchest_vocabulary_and_mapping():
    from medaug.data import padchest

    # The 193 findings and diagnoses of PadChest's labels; each stands for the observations
    # it is listed under, or (OTHER_FINDINGS) for none, never both.
    assert len(padchest.FINDINGS) == 193
    mapped = [f for fs in padchest.OBSERVATION_FINDINGS.values() for f in fs]
    assert not set(mapped) & set(padchest.OTHER_FINDINGS)
    assert set(padchest.OBSERVATION_FINDINGS) == set(OBSERVATIONS)
    assert [f for f in mapped if mapped.count(f) > 1] == ["hydropneumothorax"] * 2
    # The README lists the same mapping.
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for obs, findings in padchest.OBSERVATION_FINDINGS.items():
        line = next(ln for ln in readme.splitlines() if ln.startswith(f"| {obs} | "))
        assert line.split(" | ")[1].rstrip(" |").split(", ") == list(findings), obs


def test_data_table_command_reports_what_padchest_left_out(tmp_path, capsys):
    code, out, err = _run(["data", "table", "--dataset", "padchest", "--csv", str(PADCHEST),
                           "--out", str(tmp_path / "t.parquet")], capsys)
    assert code == 0, err
    assert err.splitlines() == [
        "note: left out 2 of 10 images by Projection: EXCLUDE 1, UNK 1",
        "note: ignored finding name(s) outside PadChest's vocabulary: 'kidney stone' (1)",
    ]
    assert out.startswith("wrote 8 rows (3 patients, 6 studies; train 8) to ")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"),
                                  load_table("padchest", PADCHEST), check_like=False)


# --------------------------------------------------------------------------- generic CSV


def test_generic_rows():
    table = load_table("csv", GENERIC / "images.csv", column_map=GENERIC_MAP)
    assert _ids(table) == [
        ("img/a1.png", "img/a1.png", "A", "A/v1", "frontal", "unknown", "train"),
        ("img/a2.png", "img/a2.png", "A", "A/v1", "lateral", "LATERAL", "train"),
        ("img/a3.png", "img/a3.png", "A", "A/v2", "frontal", "PA", "valid"),
        ("img/b1.png", "img/b1.png", "B", "B/v1", "lateral", "LL", "test"),
        ("img/b2.png", "img/b2.png", "B", "B/v2", "frontal", "AP", "test"),
    ]
    # "Pleural Effusion" is found by name; Cardiomegaly through the map.
    _assert_labels(table, [
        {"Pleural Effusion": 1.0, "Cardiomegaly": 0.0},
        {"Pleural Effusion": 1.0},
        {"Pleural Effusion": -1.0, "Cardiomegaly": 1.0},
        {"Pleural Effusion": 0.0, "Cardiomegaly": 0.0},
        {"Cardiomegaly": 1.0},
    ])
    assert table["sex"].tolist() == ["Female", "Female", "Female", "Male", None]
    np.testing.assert_array_equal(table["age"].to_numpy(), [34, 34, 35, np.nan, 61.5])


def test_generic_minimal_map_each_image_its_own_study():
    table = load_table("csv", GENERIC / "images.csv",
                       column_map={"path": "file", "patient_id": "subject",
                                   "projection": "position"})
    assert table["study_id"].tolist() == ["A/img/a1.png", "A/img/a2.png", "A/img/a3.png",
                                          "B/img/b1.png", "B/img/b2.png"]
    # From the projection alone: "Frontal" is a frontal film of unknown projection, while
    # "lateral" is the LATERAL projection in lower case.
    assert table["projection"].tolist() == ["unknown", "LATERAL", "PA", "LL", "AP"]
    assert table["view"].tolist() == ["frontal", "lateral", "frontal", "lateral", "frontal"]
    assert table["split"].tolist() == ["train"] * 5


@pytest.mark.parametrize(
    ("column_map", "message"),
    [
        ({"path": "file", "patient_id": "subject", "view": "where"},
         "images.csv: column(s) named in data.column_map not found: 'where' (for view)"),
        ({"path": "file", "patient_id": "subject"},
         "must name the CSV column(s) for: view or projection"),
        ({"path": "file", "view": "position"}, "must name the CSV column(s) for: patient_id"),
        ({"path": "file", "patient_id": "subject", "view": "position", "laterality": "x"},
         "data.column_map: unknown key(s) laterality; valid: path, patient_id, view"),
        ({"path": "file", "patient_id": "subject", "view": "notes", "image_id": "file"},
         "column 'notes' (view) has 3 value(s) outside the vocabulary: '<blank>' (3), "
         "'first' (1), 'second' (1); known: PA, AP, LATERAL, LL, frontal, other"),
    ],
)
def test_generic_map_errors(column_map, message):
    with pytest.raises(MedaugError) as err:
        load_table("csv", GENERIC / "images.csv", column_map=column_map)
    assert message in _one_line(err)


VISITS = GENERIC / "visits.csv"
VISITS_MAP = {"path": "image", "patient_id": "subject", "study_id": "exam", "view": "view",
              "study_date": "taken", "study_order": "visit"}


def test_generic_study_dates_and_order():
    table = load_table("csv", VISITS, column_map=VISITS_MAP)
    assert table["study_id"].tolist() == ["q1/v1", "q1/v1", "q1/v2", "q2/v1", "q2/v2", "q2/v3"]
    expected = [
        _days(dt.date(2015, 3, 27)),  # study v1 of q1: its earliest image (the next is 03-28)
        _days(dt.date(2015, 3, 27)),
        _days(dt.date(2015, 4, 1)),  # ISO date
        _days(dt.date(2016, 2, 29), 6),  # ISO date and time
        _days(dt.date(2016, 3, 1), 16),  # 18:00 at UTC+2
        np.nan,  # blank
    ]
    np.testing.assert_allclose(table["study_days"].to_numpy(), expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(table["study_order"].to_numpy(), [1, 1, 2, 3, 4, np.nan])


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("taken", "27/03/2015",
         "column 'taken' has 1 value(s) that are not YYYYMMDD or ISO dates, e.g. ['27/03/2015']"),
        ("taken", "2015", "column 'taken' has 1 value(s) that are not YYYYMMDD or ISO dates"),
        ("taken", "20150231", "e.g. ['20150231']"),
        ("visit", "2", "column 'study_order' differs between the images of study(s) ['q1/v1']"),
    ],
)
def test_generic_bad_study_dates(tmp_path, column, value, message):
    src = pd.read_csv(VISITS, dtype=str)
    src.loc[1, column] = value
    src.to_csv(tmp_path / "visits.csv", index=False)
    with pytest.raises(MedaugError) as err:
        load_table("csv", tmp_path / "visits.csv", column_map=VISITS_MAP)
    assert message in _one_line(err)


# --------------------------------------------------------------------------- value maps

POSITIONS = GENERIC / "positions.csv"
POSITIONS_MAP = {"path": "image", "patient_id": "subject", "study_id": "exam",
                 "projection": "Projection"}
POSITIONS_VALUES = ["projection:L=LATERAL,AP_horizontal=AP", "projection:COSTAL=other"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    from medaug.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_projection_values_stop_the_adapter_with_their_counts():
    with pytest.raises(MedaugError) as err:
        load_table("csv", POSITIONS, column_map=POSITIONS_MAP)
    # " l" counts with "L" (values compare stripped, without case); the blank cell is no
    # value (unknown projection); PA and AP are known.
    assert _one_line(err) == (
        f"{POSITIONS}: column 'Projection' (projection) has 3 value(s) outside the vocabulary: "
        "'L' (3), 'AP_horizontal' (2), 'COSTAL' (1); known: PA, AP, LATERAL, LL, frontal, "
        "other; say what each stands for with --map-values projection:RAW=CANONICAL,... "
        "(data.value_map in a config)"
    )
    # A map that leaves one value out names only that one.
    with pytest.raises(MedaugError, match=r"has 1 value\(s\) outside the vocabulary: "
                                          r"'COSTAL' \(1\); known"):
        load_table("csv", POSITIONS, column_map=POSITIONS_MAP,
                   value_map={"projection": {"l": "lateral", "AP_HORIZONTAL": "AP"}})


def _expected_positions() -> pd.DataFrame:
    """The canonical table of positions.csv under POSITIONS_VALUES, written out by hand."""
    rows = [
        # path, patient, study, view, projection
        ("p1/e1/a.png", "p1", "p1/e1", "frontal", "PA"),
        ("p1/e1/b.png", "p1", "p1/e1", "lateral", "LATERAL"),  # L
        ("p1/e2/a.png", "p1", "p1/e2", "frontal", "AP"),  # AP_horizontal
        ("p2/e1/a.png", "p2", "p2/e1", "other", "unknown"),  # COSTAL
        ("p2/e1/b.png", "p2", "p2/e1", "lateral", "LATERAL"),  # " l"
        ("p2/e2/a.png", "p2", "p2/e2", "frontal", "AP"),
        ("p3/e1/a.png", "p3", "p3/e1", "lateral", "LATERAL"),  # L
        ("p3/e1/b.png", "p3", "p3/e1", "other", "unknown"),  # blank
        ("p3/e2/a.png", "p3", "p3/e2", "frontal", "AP"),  # ap_horizontal
    ]
    data: dict[str, list] = {c: [] for c in ID}
    for path, patient, study, view, projection in rows:
        for column, value in zip(ID, (path, path, patient, study, view, projection, "train")):
            data[column].append(value)
    for obs in OBSERVATIONS:
        data[obs] = [np.nan] * len(rows)
    data["sex"] = [None] * len(rows)
    data["age"] = [np.nan] * len(rows)
    return pd.DataFrame(data).astype({c: object for c in ID + ("sex",)})


def test_a_value_map_makes_the_table_load(tmp_path):
    from medaug.data.load import parse_value_map

    value_map = parse_value_map(POSITIONS_VALUES)
    assert value_map == {"projection": {"L": "LATERAL", "AP_horizontal": "AP", "COSTAL": "other"}}
    table = load_table("csv", POSITIONS, column_map=POSITIONS_MAP, value_map=value_map)
    expected = _expected_positions()
    pd.testing.assert_frame_equal(table.loc[:, list(expected.columns)], expected)


def test_a_value_map_on_a_view_column(tmp_path):
    """Raw view values may stand for a view or a projection (which the view then carries)."""
    src = pd.read_csv(POSITIONS, dtype=str)
    src.rename(columns={"Projection": "position"}).fillna("").to_csv(tmp_path / "v.csv",
                                                                       index=False)
    column_map = {"path": "image", "patient_id": "subject", "study_id": "exam",
                  "view": "position"}
    with pytest.raises(MedaugError, match=r"column 'position' \(view\) has 4 value\(s\) "
                                          r"outside the vocabulary: 'L' \(3\), "
                                          r"'AP_horizontal' \(2\), '<blank>' \(1\), "
                                          r"'COSTAL' \(1\);"):
        load_table("csv", tmp_path / "v.csv", column_map=column_map)
    table = load_table(
        "csv", tmp_path / "v.csv", column_map=column_map,
        value_map={"view": {"L": "lateral", "AP_horizontal": "frontal", "COSTAL": "other",
                            "": "other"}},
    )
    assert table["view"].tolist() == ["frontal", "lateral", "frontal", "other", "lateral",
                                      "frontal", "lateral", "other", "frontal"]
    # "lateral" is also the LATERAL projection; "frontal" and "other" name no projection.
    assert table["projection"].tolist() == ["PA", "LATERAL", "unknown", "unknown", "LATERAL",
                                            "AP", "LATERAL", "unknown", "unknown"]


@pytest.mark.parametrize(
    ("value_map", "message"),
    [
        ({"sex": {"1": "Male"}},
         "data.value_map: column 'sex' has no vocabulary to map; valid: view, projection"),
        ({"projection": {"L": "SIDE"}},
         "data.value_map: projection:L=SIDE names 'SIDE'; valid: PA, AP, LATERAL, LL, "
         "frontal, other"),
        ({"projection": {"L": "LATERAL", "l": "other"}},
         "data.value_map: projection value 'l' is mapped to both LATERAL and OTHER"),
        ({"projection": ["L=LATERAL"]},
         "data.value_map.projection must map raw values to canonical ones"),
    ],
)
def test_bad_value_maps(value_map, message):
    with pytest.raises(MedaugError) as err:
        load_table("csv", POSITIONS, column_map=POSITIONS_MAP, value_map=value_map)
    assert _one_line(err).startswith(message)


@pytest.mark.parametrize(
    "items", [["projection"], ["projection:"], ["projection:L"], ["projection:L=,AP=AP"],
              [":L=LATERAL"]],
)
def test_malformed_map_values(items):
    from medaug.data.load import parse_value_map

    with pytest.raises(MedaugError) as err:
        parse_value_map(items)
    assert _one_line(err) == (
        f"--map-values {items[0]!r} must look like column:RAW=CANONICAL,RAW=CANONICAL..."
    )


def test_value_map_only_for_csv():
    with pytest.raises(MedaugError) as err:
        load_table("chexpert", CHEXPERT / "train.csv", value_map={"projection": {"L": "LL"}})
    assert _one_line(err) == "data.value_map applies to dataset 'csv' only, not 'chexpert'"


def test_value_map_in_configs():
    from medaug.config import build_config, flatten

    cfg = build_config({"data": {"value_map": {"projection": {"L": "LATERAL", "COSTAL": "other"}}}})
    assert cfg.data.value_map == {"projection": {"L": "LATERAL", "COSTAL": "other"}}
    # An override names the whole map, as for data.column_map.
    cfg = build_config(None, ["data.value_map={view: {Side: lateral}, projection: {L: LL}}"])
    assert cfg.data.value_map == {"view": {"Side": "lateral"}, "projection": {"L": "LL"}}
    assert flatten({"data": {"value_map": cfg.data.value_map}})["data.value_map"] == (
        cfg.data.value_map
    )
    with pytest.raises(MedaugError, match="data.value_map: projection:L=SIDE names 'SIDE'"):
        build_config(None, ["data.value_map={projection: {L: SIDE}}"])
    with pytest.raises(MedaugError, match="data.value_map.projection: expected a mapping"):
        build_config(None, ["data.value_map={projection: L}"])


def test_value_map_of_a_config_reaches_the_training_table(tmp_path):
    """data.value_map in a job's config is what the pretraining data is read with."""
    from PIL import Image

    from medaug.config import build_config
    from medaug.engine.data import prepare_data

    for path in pd.read_csv(POSITIONS)["image"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 16), 128, dtype=np.uint8)).save(tmp_path / path)
    shutil.copy(POSITIONS, tmp_path / "positions.csv")
    data = {"dataset": "csv", "csv": str(tmp_path / "positions.csv"), "column_map": POSITIONS_MAP,
            "image_size": 16, "num_loader_workers": 0}
    with pytest.raises(MedaugError, match="'L' \\(3\\), 'AP_horizontal' \\(2\\), 'COSTAL'"):
        prepare_data(build_config({"data": data}), tmp_path / "out", progress=False)
    cfg = build_config({"data": data | {"value_map": {"projection": {
        "L": "LATERAL", "AP_horizontal": "AP", "COSTAL": "other"}}}})
    table = prepare_data(cfg, tmp_path / "out", progress=False).table
    expected = _expected_positions()
    pd.testing.assert_frame_equal(table.loc[:, list(expected.columns)], expected)


def test_data_table_command_with_map_values(tmp_path, capsys):
    base = ["data", "table", "--dataset", "csv", "--csv", str(POSITIONS), "--map",
            "path=image", "patient_id=subject", "study_id=exam", "projection=Projection",
            "--out", str(tmp_path / "t.parquet")]
    code, out, err = _run(base, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "'L' (3), 'AP_horizontal' (2), 'COSTAL' (1)" in err
    assert not (tmp_path / "t.parquet").exists()
    code, out, err = _run(base + ["--map-values"] + POSITIONS_VALUES, capsys)
    assert code == 0, err
    assert out.startswith("wrote 9 rows (3 patients, 6 studies; train 9) to ")
    expected = _expected_positions()
    table = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(table.loc[:, list(expected.columns)], expected)
    code, out, err = _run(base + ["--map-values", "projection=L"], capsys)
    assert code == 2 and err.strip() == (
        "medaug data: error: --map-values 'projection=L' must look like "
        "column:RAW=CANONICAL,RAW=CANONICAL..."
    )


# --------------------------------------------------------------------------- load_table

FIXTURE_OF = {
    "chexpert": (CHEXPERT / "train.csv", None),
    "mimic": (MIMIC, None),
    "nih": (NIH / "Data_Entry_2017.csv", None),
    "padchest": (PADCHEST, None),
    "csv": (GENERIC / "images.csv", GENERIC_MAP),
}


def test_registry_names():
    assert list(DATASETS) == ["chexpert", "mimic", "nih", "padchest", "csv"]
    with pytest.raises(MedaugError) as err:
        load_table("vindr", CHEXPERT / "train.csv")
    assert _one_line(err) == (
        "unknown dataset 'vindr'; valid: chexpert, mimic, nih, padchest, csv"
    )


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_dataset_round_trips_through_parquet(dataset, tmp_path):
    csv, column_map = FIXTURE_OF[dataset]
    table = load_table(dataset, csv, column_map=column_map)
    assert tuple(table.columns) == TABLE_COLUMNS and len(table) > 0
    assert table.attrs["dataset"] == dataset
    # Study ids never cross patients and always start with the patient id.
    assert all(s.startswith(p + "/") for p, s in zip(table["patient_id"], table["study_id"]))
    back = read_table(write_table(table, tmp_path / "t.parquet"))
    pd.testing.assert_frame_equal(back, table, check_like=False)


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_missing_file(dataset, tmp_path):
    column_map = FIXTURE_OF[dataset][1]
    with pytest.raises(MedaugError) as err:
        load_table(dataset, tmp_path / "absent.csv", column_map=column_map)
    assert _one_line(err).endswith(f"{tmp_path / 'absent.csv'} does not exist")


def test_column_map_only_for_csv():
    with pytest.raises(MedaugError, match="column_map applies to dataset 'csv' only"):
        load_table("chexpert", CHEXPERT / "train.csv", column_map={"path": "Path"})
    with pytest.raises(MedaugError, match="dataset 'csv' needs data.column_map"):
        load_table("csv", GENERIC / "images.csv")


def test_unreadable_csv(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(MedaugError) as err:
        load_table("chexpert", tmp_path / "train.csv")
    assert _one_line(err) == f"CheXpert CSV {tmp_path / 'train.csv'} is empty"


def test_import_stays_light():
    """Metadata-only commands import medaug.data without torch, Ray or matplotlib."""
    code = (
        "import sys, medaug.data, medaug.data.load; "
        "print(sorted(m for m in ('torch', 'ray', 'matplotlib', 'torchvision') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mimic_ids_as_text_and_blank_label_ids(tmp_path):
    """Join keys of different kinds in the two files still meet: text ids, float ids."""
    folder = _mimic_copy(tmp_path)
    labels = folder / "mimic-cxr-2.0.0-chexpert.csv"
    lines = labels.read_text().splitlines()
    # A label row with a blank subject makes the column float; padded text ids elsewhere.
    labels.write_text("\n".join(lines + [",59999999" + "," * 14]) + "\n")
    meta = folder / "mimic-cxr-2.0.0-metadata.csv"
    meta.write_text(meta.read_text().replace(",10000032,", ",s10000032,", 1))
    table = load_table("mimic", folder)
    # The first image's subject is now "s10000032": its study has no label row any more.
    _assert_labels(table, [{}] + MIMIC_LABELS[1:])
    assert table["patient_id"].tolist()[:2] == ["s10000032", "10000032"]
