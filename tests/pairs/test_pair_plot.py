import pandas as pd

from medaug.pairs import build_pair_index, pair_stats, plot_pair_stats


def test_plot_writes_a_png(tmp_path):
    table = pd.DataFrame(
        {
            "patient_id": ["a", "a", "a", "b"],
            "study_id": ["1", "1", "2", "1"],
            "view": ["frontal", "lateral", "frontal", "frontal"],
            "Pleural Effusion": [1.0, 0.0, 1.0, None],
        }
    )
    stats = pair_stats(
        table, build_pair_index(table, "patient_all_studies"), label="Pleural Effusion"
    )
    out = plot_pair_stats(stats, tmp_path / "fig" / "pairs.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list((tmp_path / "fig").glob("*.tmp"))
    no_label = pair_stats(table, build_pair_index(table, "patient_same_study"))
    assert plot_pair_stats(no_label, tmp_path / "b.png").exists()
