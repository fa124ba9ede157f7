import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from chexpert_shaped import make_chexpert_table, write_chexpert_csv  # noqa: E402

from medaug.data.load import load_table  # noqa: E402
from medaug.data.schema import validate  # noqa: E402


def test_generator_sizes_and_csv_round_trip(tmp_path):
    table = make_chexpert_table(n_images=2000, n_patients=500, n_studies=1700, seed=1)
    assert len(table) == 2000
    assert table["patient_id"].nunique() == 500 and table["study_id"].nunique() == 1700
    assert abs((table["view"] == "lateral").mean() - 0.14) < 0.01
    per_study = table.groupby("study_id").size()
    assert per_study.max() <= 3
    # Labels are per study: every image of a study carries the same report labels.
    effusion = table["Pleural Effusion"].fillna(9.0)
    assert (effusion.groupby(table["study_id"]).nunique() == 1).all()
    validate(table)

    csv = write_chexpert_csv(table, tmp_path / "train.csv")
    loaded = load_table("chexpert", csv)
    assert loaded["patient_id"].tolist() == table["patient_id"].tolist()
    assert loaded["study_id"].tolist() == table["study_id"].tolist()
    assert loaded["view"].tolist() == table["view"].tolist()
    assert np.array_equal(
        loaded["Pleural Effusion"].to_numpy(), table["Pleural Effusion"].to_numpy(), equal_nan=True
    )
