"""A synthetic metadata table shaped like CheXpert's training set (no images).

Default sizes are those of CheXpert ``train.csv``: 223,414 images, 64,540 patients and
187,641 studies, about 14% lateral views.  Studies per patient are heavy-tailed (most
patients have one study, a few have dozens); most studies hold one image, about a sixth hold
a frontal plus a lateral, a few hold three.  Labels are drawn per study (all images of a
study share the report's labels) and persist across a patient's studies, so label
disagreement statistics behave like the real ones.

As a library: :func:`make_chexpert_table` returns the canonical table and
:func:`write_chexpert_csv` writes it in CheXpert's own CSV layout.  As a script::

    python benchmarks/chexpert_shaped.py OUT.csv [--images N --patients N --studies N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from medaug.data.schema import COLUMNS, OBSERVATIONS

N_IMAGES = 223_414
N_PATIENTS = 64_540
N_STUDIES = 187_641
LATERAL_SHARE = 0.14

# Rough per-image prevalences of (positive, negative, uncertain); the rest is blank.
_PREVALENCE: dict[str, tuple[float, float, float]] = {
    "No Finding": (0.10, 0.00, 0.00),
    "Enlarged Cardiomediastinum": (0.05, 0.05, 0.06),
    "Cardiomegaly": (0.12, 0.05, 0.04),
    "Lung Opacity": (0.47, 0.03, 0.03),
    "Lung Lesion": (0.04, 0.01, 0.01),
    "Edema": (0.23, 0.09, 0.06),
    "Consolidation": (0.07, 0.12, 0.12),
    "Pneumonia": (0.03, 0.01, 0.08),
    "Atelectasis": (0.15, 0.01, 0.15),
    "Pneumothorax": (0.09, 0.25, 0.01),
    "Pleural Effusion": (0.39, 0.15, 0.05),
    "Pleural Other": (0.02, 0.00, 0.01),
    "Fracture": (0.04, 0.01, 0.00),
    "Support Devices": (0.52, 0.03, 0.00),
}


def _spread(total: int, n: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n counts >= 1 summing to ``total``: one each, the rest multinomial on ``weights``."""
    extra = rng.multinomial(total - n, weights / weights.sum())
    return 1 + extra


def make_chexpert_table(
    n_images: int = N_IMAGES,
    n_patients: int = N_PATIENTS,
    n_studies: int = N_STUDIES,
    lateral_share: float = LATERAL_SHARE,
    seed: int = 0,
) -> pd.DataFrame:
    """The canonical metadata table (``medaug.data.schema`` columns) of a CheXpert-like set.

    Args:
        n_images, n_patients, n_studies: exact sizes (need n_images >= n_studies >= n_patients).
        lateral_share: target share of lateral images (only studies with 2+ images get one).
        seed: generator seed.
    Returns:
        n_images rows, ordered by patient, study, view number (as CheXpert's CSV is).
    """
    if not n_images >= n_studies >= n_patients >= 1:
        raise ValueError("need n_images >= n_studies >= n_patients >= 1")
    rng = np.random.default_rng(seed)
    # Studies per patient: heavy-tailed (lognormal propensity), every patient has one.
    studies_per_patient = _spread(n_studies, n_patients, rng.lognormal(0.0, 1.0, n_patients), rng)
    # Images per study: most one, about a sixth two (frontal + lateral), a few three.
    extra = n_images - n_studies
    n_three = max(extra // 50, extra - n_studies)  # enough threes to fit in n_studies
    n_two = extra - 2 * n_three
    if n_two < 0:
        raise ValueError("n_images too large for n_studies (at most three images a study)")
    images_per_study = np.ones(n_studies, dtype=np.int64)
    chosen = rng.choice(n_studies, n_two + n_three, replace=False)
    images_per_study[chosen[:n_two]] = 2
    images_per_study[chosen[n_two:]] = 3
    patient_of_study = np.repeat(np.arange(n_patients), studies_per_patient)  # S
    study_number = (
        np.arange(n_studies)
        - np.repeat(np.cumsum(studies_per_patient) - studies_per_patient, studies_per_patient)
        + 1
    )  # S: 1-based within patient
    study_of_image = np.repeat(np.arange(n_studies), images_per_study)  # N
    view_number = (
        np.arange(n_images)
        - np.repeat(np.cumsum(images_per_study) - images_per_study, images_per_study)
        + 1
    )  # N: 1-based within study

    # Laterals: the last image of some multi-image studies.
    multi = np.flatnonzero(images_per_study >= 2)
    n_lateral = min(int(round(lateral_share * n_images)), len(multi))
    lateral_study = np.zeros(n_studies, dtype=bool)
    lateral_study[rng.choice(multi, n_lateral, replace=False)] = True
    is_last = view_number == images_per_study[study_of_image]
    lateral = is_last & lateral_study[study_of_image]  # N
    ap = rng.random(n_images) < 0.75
    projection = np.where(lateral, "LATERAL", np.where(ap, "AP", "PA"))
    view = np.where(lateral, "lateral", "frontal")

    patient = np.char.add("patient", np.char.zfill((patient_of_study + 1).astype(str), 5))  # S
    study = np.char.add("study", study_number.astype(str))  # S
    img_patient = patient[study_of_image]
    img_study = study[study_of_image]
    path = (
        "CheXpert-v1.0-small/train/"
        + pd.Series(img_patient)
        + "/"
        + pd.Series(img_study)
        + "/view"
        + pd.Series(view_number.astype(str))
        + "_"
        + pd.Series(view)
        + ".jpg"
    )
    data: dict[str, object] = {
        "image_id": path.to_numpy(),
        "path": path.to_numpy(),
        "patient_id": img_patient,
        "study_id": (pd.Series(img_patient) + "/" + pd.Series(img_study)).to_numpy(),
        "view": view,
        "projection": projection,
        "split": np.full(n_images, "train"),
    }
    # Labels per study, persisting across a patient's studies with probability 0.6.
    values = np.array([1.0, 0.0, -1.0, np.nan])
    for obs in OBSERVATIONS:
        pos, neg, unc = _PREVALENCE[obs]
        probs = np.array([pos, neg, unc, 1.0 - pos - neg - unc])
        base = rng.choice(4, n_patients, p=probs)[patient_of_study]  # S
        fresh = rng.choice(4, n_studies, p=probs)  # S
        state = np.where(rng.random(n_studies) < 0.6, base, fresh)
        data[obs] = values[state][study_of_image]
    sex = rng.choice(np.array(["Male", "Female"]), n_patients)
    age = rng.integers(18, 91, n_patients).astype(np.float64)
    patient_of_image = patient_of_study[study_of_image]
    data["sex"] = sex[patient_of_image]
    data["age"] = age[patient_of_image]
    table = pd.DataFrame(data)
    return table.loc[:, list(COLUMNS)]


def to_chexpert_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The canonical table in CheXpert ``train.csv`` layout (Path, Sex, Age, ...)."""
    lateral = table["view"].to_numpy() == "lateral"
    projection = table["projection"].to_numpy()
    out = pd.DataFrame(
        {
            "Path": table["path"].to_numpy(),
            "Sex": table["sex"].to_numpy(),
            "Age": table["age"].astype("Int64").to_numpy(),
            "Frontal/Lateral": np.where(lateral, "Lateral", "Frontal"),
            "AP/PA": np.where(lateral, "", projection),
        }
    )
    for obs in OBSERVATIONS:
        out[obs] = table[obs].to_numpy()
    return out


def write_chexpert_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` as a CheXpert-format CSV (labels 1.0 / 0.0 / -1.0 / blank), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    to_chexpert_frame(table).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="CSV to write")
    parser.add_argument("--images", type=int, default=N_IMAGES)
    parser.add_argument("--patients", type=int, default=N_PATIENTS)
    parser.add_argument("--studies", type=int, default=N_STUDIES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = make_chexpert_table(args.images, args.patients, args.studies, seed=args.seed)
    write_chexpert_csv(table, args.out)
    print(f"wrote {args.out}: {len(table)} images")


if __name__ == "__main__":
    main()
