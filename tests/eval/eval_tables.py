"""Small canonical tables built in memory for the evaluation tests."""

import numpy as np
import pandas as pd

from medaug.data.schema import OBSERVATIONS, validate


def make_table(n_patients=200, seed=0, prevalence=0.3, uncertain=0.1, splits=None):
    """Patients with 1-4 studies of 1-2 images; labels per study; ``splits`` maps a split name
    to the share of patients assigned to it (default: all train)."""
    rng = np.random.default_rng(seed)
    split_names = list((splits or {"train": 1.0}).keys())
    split_p = np.array(list((splits or {"train": 1.0}).values()))
    rows = []
    for p in range(n_patients):
        split = split_names[rng.choice(len(split_names), p=split_p / split_p.sum())]
        for s in range(int(rng.integers(1, 5))):
            u = rng.random()
            label = -1.0 if u < uncertain else (1.0 if u < uncertain + prevalence else np.nan)
            for v, proj in enumerate(["PA", "LATERAL"][: int(rng.integers(1, 3))]):
                row = {o: np.nan for o in OBSERVATIONS}
                row.update(
                    image_id=f"p{p}/s{s}/v{v}",
                    path=f"train/patient{p:05d}/study{s + 1}/view{v + 1}.jpg",
                    patient_id=f"p{p}",
                    study_id=f"p{p}/s{s}",
                    view="frontal" if proj == "PA" else "lateral",
                    projection=proj,
                    split=split,
                    sex="Female",
                    age=50.0,
                )
                row["Pleural Effusion"] = label
                row["Edema"] = 1.0 if rng.random() < 0.2 else 0.0
                rows.append(row)
    return validate(pd.DataFrame(rows), "test table")

