"""PadChest ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` -> the canonical table.

Columns read: ImageID, ImageDir, StudyID, PatientID, StudyDate_DICOM, Projection, Labels
(required); PatientBirth, PatientSex_DICOM (used when present).  The file's other columns
(reports, DICOM tags, ...) are not parsed.  Quoted fields may span several lines.

- image_id = ImageID; path = ``<ImageDir>/<ImageID>`` (the numbered subfolder holding the
  PNG); patient_id = PatientID; study_id = "<PatientID>/<StudyID>".
- Projection: PA and AP keep their name, AP_horizontal (a supine AP film) is AP; L is
  LATERAL; these are frontal or lateral views.  COSTAL (a rib series) is view "other",
  projection "unknown".  EXCLUDE (images PadChest marks as unusable) and UNK (projection
  unknown) are left out; how many is said in ``table.attrs["notes"]``.  Any other value is
  an error naming each such value with its count.
- study_days from StudyDate_DICOM (YYYYMMDD); age = the study's year - PatientBirth (a
  year; NaN when blank or later than the study); sex M -> Male, F -> Female, else missing.
- Split: PadChest has no official one, so every image is train (the evaluation draws a
  patient-disjoint test partition).

Labels.  ``Labels`` is a Python-style list of findings (``['pleural effusion',
'cardiomegaly']``), taken as exhaustive like NIH's: an observation is 1 where one of its
findings is listed and 0 otherwise.  A blank or empty list, or one holding ``exclude``
(reports PadChest could not label), leaves every observation blank (NaN).  The findings
that stand for a CheXpert observation are listed in ``OBSERVATION_FINDINGS``; the other
PadChest findings (aortic elongation, scoliosis, emphysema, ...) stand for none.  A finding
name outside PadChest's vocabulary (``FINDINGS``) is ignored and reported in
``table.attrs["notes"]``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from medaug.data.generic import (
    canonical_frame,
    counted,
    dates_to_days,
    distinct_text,
    earliest_per_study,
    normalise_sex,
    read_csv_file,
    require_columns,
)
from medaug.data.schema import OBSERVATIONS, validate
from medaug.errors import MedaugError

REQUIRED: tuple[str, ...] = (
    "ImageID",
    "ImageDir",
    "StudyID",
    "PatientID",
    "StudyDate_DICOM",
    "Projection",
    "Labels",
)
OPTIONAL: tuple[str, ...] = ("PatientBirth", "PatientSex_DICOM")

# Projection -> (view, projection); None: the image is left out.
PROJECTIONS: dict[str, tuple[str, str] | None] = {
    "PA": ("frontal", "PA"),
    "AP": ("frontal", "AP"),
    "AP_HORIZONTAL": ("frontal", "AP"),
    "L": ("lateral", "LATERAL"),
    "COSTAL": ("other", "unknown"),
    "EXCLUDE": None,
    "UNK": None,
}

# The findings that stand for each CheXpert observation (a finding may stand for two).
OBSERVATION_FINDINGS: dict[str, tuple[str, ...]] = {
    "No Finding": ("normal",),
    "Enlarged Cardiomediastinum": ("mediastinal enlargement", "superior mediastinal enlargement"),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": (
        "infiltrates", "interstitial pattern", "reticular interstitial pattern",
        "reticulonodular interstitial pattern", "alveolar pattern", "ground glass pattern",
        "miliary opacities", "increased density",
    ),
    "Lung Lesion": (
        "nodule", "multiple nodules", "mass", "pulmonary mass", "lung metastasis", "cavitation",
        "lepidic adenocarcinoma",
    ),
    "Edema": ("pulmonary edema", "heart insufficiency", "kerley lines", "hilar congestion"),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Atelectasis": (
        "atelectasis", "total atelectasis", "lobar atelectasis", "segmental atelectasis",
        "laminar atelectasis", "round atelectasis", "atelectasis basal",
    ),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
    "Pleural Effusion": (
        "pleural effusion", "loculated pleural effusion", "loculated fissural effusion",
        "hydropneumothorax", "empyema", "costophrenic angle blunting",
    ),
    "Pleural Other": (
        "pleural thickening", "apical pleural thickening", "calcified pleural thickening",
        "pleural plaques", "calcified pleural plaques", "pleural mass", "asbestosis signs",
    ),
    "Fracture": (
        "fracture", "rib fracture", "callus rib fracture", "clavicle fracture",
        "humeral fracture", "vertebral fracture",
    ),
    "Support Devices": (
        "endotracheal tube", "tracheostomy tube", "NSG tube", "chest drain tube",
        "gastrostomy tube", "nephrostomy tube", "ventriculoperitoneal drain tube", "catheter",
        "central venous catheter", "central venous catheter via jugular vein",
        "central venous catheter via subclavian vein",
        "central venous catheter via umbilical vein", "reservoir central venous catheter",
        "pacemaker", "single chamber device", "dual chamber device", "electrical device",
        "artificial heart valve", "artificial aortic heart valve",
        "artificial mitral heart valve", "aortic endoprosthesis", "double J stent",
    ),
}
# Findings that stand for no CheXpert observation.
OTHER_FINDINGS: tuple[str, ...] = (
    "COPD signs", "Chilaiditi sign", "abnormal foreign body", "abscess", "adenopathy",
    "air fluid level", "air trapping", "aortic aneurysm", "aortic atheromatosis",
    "aortic button enlargement", "aortic elongation", "ascendent aortic elongation",
    "axial hyperostosis", "azygoesophageal recess shift", "azygos lobe",
    "blastic bone lesion", "bone cement", "bone metastasis", "breast mass", "bronchiectasis",
    "bronchovascular markings", "bullas", "calcified adenopathy", "calcified densities",
    "calcified fibroadenoma", "calcified granuloma", "calcified mediastinal adenopathy",
    "central vascular redistribution", "cervical rib", "chronic changes",
    "costochondral junction hypertrophy", "cyst", "dai", "descendent aortic elongation",
    "dextrocardia", "diaphragmatic eventration", "emphysema", "end on vessel",
    "endoprosthesis", "esophagic dilatation", "exclude", "external foreign body",
    "fibrotic band", "fissure thickening", "flattened diaphragm", "goiter", "granuloma",
    "gynecomastia", "heart valve calcified", "hemidiaphragm elevation", "hiatal hernia",
    "hilar enlargement", "humeral prosthesis", "hyperinflated lung", "hypoexpansion",
    "hypoexpansion basal", "kyphosis", "lipomatosis", "lung vascular paucity",
    "lymphangitis carcinomatosa", "lytic bone lesion", "major fissure thickening",
    "mammary prosthesis", "mastectomy", "mediastinal mass", "mediastinal shift",
    "mediastinic lipomatosis", "metal", "minor fissure thickening", "nipple shadow",
    "non axial articular degenerative changes", "obesity", "osteopenia", "osteoporosis",
    "osteosynthesis material", "pectum carinatum", "pectum excavatum",
    "pericardial effusion", "pneumomediastinum", "pneumoperitoneo",
    "post radiotherapy changes", "prosthesis", "pseudonodule",
    "pulmonary artery enlargement", "pulmonary artery hypertension", "pulmonary fibrosis",
    "pulmonary hypertension", "pulmonary venous hypertension", "respiratory distress",
    "right sided aortic arch", "sclerotic bone lesion", "scoliosis", "soft tissue mass",
    "sternoclavicular junction hypertrophy", "sternotomy", "subacromial space narrowing",
    "subcutaneous emphysema", "suboptimal study", "supra aortic elongation", "surgery",
    "surgery breast", "surgery heart", "surgery humeral", "surgery lung", "surgery neck",
    "suture material", "thoracic cage deformation", "tracheal shift", "tuberculosis",
    "tuberculosis sequelae", "unchanged", "vascular hilar enlargement",
    "vascular redistribution", "vertebral anterior compression", "vertebral compression",
    "vertebral degenerative changes", "volume loss",
)
# A list holding this marks a report PadChest could not label.
UNLABELLED = "exclude"


def _key(name: str) -> str:
    """Finding names compared without case or repeated blanks."""
    return " ".join(name.split()).lower()


def _observations_of() -> dict[str, tuple[int, ...]]:
    """Finding key -> indices into OBSERVATIONS (empty: the finding stands for none)."""
    out: dict[str, tuple[int, ...]] = {_key(f): () for f in OTHER_FINDINGS}
    for obs, findings in OBSERVATION_FINDINGS.items():
        for finding in findings:
            out[_key(finding)] = out.get(_key(finding), ()) + (OBSERVATIONS.index(obs),)
    return out


_OBSERVATIONS_OF = _observations_of()
FINDINGS: tuple[str, ...] = tuple(sorted(_OBSERVATIONS_OF))  # PadChest's vocabulary, keyed

# A Python-style list of quoted strings (items may be separated by line breaks).
_LIST = re.compile(r"""\s*\[\s*(?:(?:'[^']*'|"[^"]*")\s*(?:,\s*)?)*\]\s*""")
_ITEM = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_UNKNOWN, _EMPTY, _UNLABELLED = "unknown", "empty", "unlabelled"


def parse_label_list(text: str) -> list[str] | None:
    """``"['pleural effusion', 'cardiomegaly']"`` -> ``["pleural effusion", "cardiomegaly"]``
    (the items as written); None when ``text`` is not a list of quoted strings."""
    if not _LIST.fullmatch(text):
        return None
    return [a or b for a, b in _ITEM.findall(text)]


def _meaning(item: str) -> tuple[int, ...] | str:
    """What one listed item stands for: observation indices (maybe none), or _EMPTY,
    _UNLABELLED or _UNKNOWN."""
    key = _key(item)
    if not key:
        return _EMPTY
    if key == UNLABELLED:
        return _UNLABELLED
    return _OBSERVATIONS_OF.get(key, _UNKNOWN)


def padchest_labels(labels: pd.Series, source: str) -> tuple[np.ndarray, dict[str, int]]:
    """PadChest label lists -> CheXpert observation values.

    Args:
        labels: N ``Labels`` cells (text; blanks as NaN).
        source: the file, for error messages.

    Returns:
        values: N x 14 float64 (``OBSERVATIONS`` order) of 1.0 / 0.0, NaN on unlabelled rows
        (blank, empty or holding ``exclude``);
        unknown: finding names outside PadChest's vocabulary -> rows listing them.

    Raises:
        MedaugError: cells that are not a list of quoted strings, counted, with examples.
    """
    codes, counts, text = distinct_text(labels)
    meaning: dict[str, tuple[int, ...] | str] = {}  # item as written -> _meaning (~200 items)
    hit_rows: list[int] = []  # (distinct list, observation) pairs that are 1
    hit_obs: list[int] = []
    unlabelled = np.zeros(len(text), dtype=bool)
    malformed = np.zeros(len(text), dtype=bool)
    unknown: dict[str, int] = {}
    for u, cell in enumerate(text):  # U distinct label lists, not N rows
        items = [] if cell is None else parse_label_list(cell)
        if items is None:
            malformed[u] = True
            continue
        listed = False
        for item in items:
            m = meaning.get(item)
            if m is None:
                m = meaning[item] = _meaning(item)
            if m == _EMPTY:
                continue
            listed = True
            if m == _UNLABELLED:
                unlabelled[u] = True
            elif m == _UNKNOWN:
                name = " ".join(item.split())
                unknown[name] = unknown.get(name, 0) + int(counts[u])
            else:
                hit_rows.extend([u] * len(m))
                hit_obs.extend(m)
        unlabelled[u] |= not listed
    if malformed.any():
        shown = [str(t)[:60] for t in text[malformed]][:3]
        raise MedaugError(
            f"{source}: {int(counts[malformed].sum())} 'Labels' value(s) are not a list of "
            f"quoted findings like ['pleural effusion'], e.g. {shown}"
        )
    table = np.zeros((len(text), len(OBSERVATIONS)), dtype=np.float64)  # U x 14
    table[hit_rows, hit_obs] = 1.0
    table[unlabelled] = np.nan
    return table[codes], unknown


def _projections(
    values: pd.Series, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """N views, N projections (None on rows left out), the N kept-row mask and the count
    left out per value, from PadChest's Projection column; a value outside ``PROJECTIONS``
    is an error naming each with its count."""
    codes, counts, text = distinct_text(values)
    views = np.empty(len(text), dtype=object)
    projections = np.empty(len(text), dtype=object)
    keep = np.ones(len(text), dtype=bool)
    left_out: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for u, raw in enumerate(text):
        word = (raw or "").upper()
        if word not in PROJECTIONS:
            name = raw or "<blank>"
            unknown[name] = unknown.get(name, 0) + int(counts[u])
        elif PROJECTIONS[word] is None:
            keep[u] = False
            left_out[word] = left_out.get(word, 0) + int(counts[u])
        else:
            views[u], projections[u] = PROJECTIONS[word]
    if unknown:
        raise MedaugError(
            f"{source}: column 'Projection' has value(s) outside PadChest's: {counted(unknown)}; "
            "known: PA, L, AP, AP_horizontal, COSTAL, EXCLUDE, UNK"
        )
    return views[codes], projections[codes], keep[codes], left_out


def read_padchest(
    csv: str | Path,
    *,
    include_siblings: bool = False,
    column_map: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read PadChest's label CSV into one table.

    Args:
        csv: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or .csv.gz).
        include_siblings: ignored (one file holds the whole table).
        column_map: not used by this format; must be empty.

    Returns:
        The validated canonical table in file order, without the EXCLUDE / UNK images;
        ``attrs["notes"]`` holds one line per thing left out (absent when nothing was).
    """
    del include_siblings
    if column_map:
        raise MedaugError("data.column_map applies to dataset 'csv' only, not 'padchest'")
    csv = Path(csv)
    source = str(csv)
    # The ids are long digit strings: as numbers they would lose digits.  The other columns
    # keep pandas' own types (reading them all as text doubles the parse time).
    ids = ("ImageID", "StudyID", "PatientID")
    df = read_csv_file(csv, "PadChest CSV", dtype=dict.fromkeys(ids, str),
                       columns=REQUIRED + OPTIONAL)
    require_columns(df, REQUIRED, csv)
    n_file = len(df)
    view, projection, keep, left_out = _projections(df["Projection"], source)
    if not keep.all():
        df = df.loc[keep].reset_index(drop=True)
        view, projection = view[keep], projection[keep]
    n = len(df)
    image = df["ImageID"].astype("string").str.strip()
    dir_codes, _, dirs = distinct_text(df["ImageDir"])  # "0" .. "54", also when read as 1.0
    folder = pd.Series(dirs.to_numpy(dtype=object)[dir_codes], dtype="string")
    patient = df["PatientID"].astype("string").str.strip()
    study = patient + "/" + df["StudyID"].astype("string").str.strip()
    days = earliest_per_study(dates_to_days(df["StudyDate_DICOM"], source, "StudyDate_DICOM"),
                              study)
    cols: dict[str, object] = {
        "image_id": image,
        "path": folder + "/" + image,
        "patient_id": patient,
        "study_id": study,
        "view": view,
        "projection": projection,
        "split": np.full(n, "train", dtype=object),
        "study_days": days,
    }
    values, unknown = padchest_labels(df["Labels"], source)
    for i, obs in enumerate(OBSERVATIONS):
        cols[obs] = values[:, i]
    if "PatientSex_DICOM" in df.columns:
        cols["sex"] = normalise_sex(df["PatientSex_DICOM"])
    if "PatientBirth" in df.columns:
        year = pd.to_datetime(pd.Series(days), unit="D").dt.year.to_numpy(dtype=np.float64)
        age = year - pd.to_numeric(df["PatientBirth"], errors="coerce").to_numpy(np.float64)
        cols["age"] = np.where(age >= 0, age, np.nan)
    table = validate(canonical_frame(cols, n), source)
    notes = []
    if left_out:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(left_out.items()))
        notes.append(f"left out {n_file - n} of {n_file} images by Projection: {parts}")
    if unknown:
        notes.append(f"ignored finding name(s) outside PadChest's vocabulary: {counted(unknown)}")
    if notes:
        table.attrs["notes"] = notes
    return table
