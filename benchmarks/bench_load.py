"""Speed of the CheXpert adapter at full scale (223,414 rows), against its goal.

Figures (best of ``--repeats``, measured side by side in this process):

- ``pandas.read_csv`` of the CSV alone (the floor: every adapter must read the file);
- ``load_table("chexpert", csv)``: read, parse, normalise and validate;
- the adapter's cost beyond ``read_csv`` and the ratio load / read (goal: load <= 2x
  read_csv, i.e. about 0.5 s beyond a 0.45 s read on an idle machine; the ratio is the
  verdict because absolute times swing with the load of a shared machine);
- path parsing: the adapter's pyarrow kernels against pandas' ``str.extract`` with the
  same pattern (a Python call per row), both on the same column.

    python benchmarks/bench_load.py [--json PATH] [--repeats 3] [--rows N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chexpert_shaped import make_chexpert_table, write_chexpert_csv  # noqa: E402

from medaug.data.chexpert import parse_paths  # noqa: E402
from medaug.data.load import load_table  # noqa: E402

GOAL_RATIO = 2.0
EXTRACT = r"patient(\d+)/study(\d+)/view(\d+)_(frontal|lateral)"


def _best(fn, repeats: int) -> tuple[float, object]:
    """Fastest of ``repeats`` wall-clock timings of ``fn()`` (seconds) and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=223_414)
    args = parser.parse_args()

    n = args.rows
    table = make_chexpert_table(n, max(1, n * 64_540 // 223_414),
                                max(1, n * 187_641 // 223_414), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_chexpert_csv(table, Path(tmp) / "train.csv")
        dtype = {"Path": str, "Sex": str, "Frontal/Lateral": str, "AP/PA": str}
        t_read, raw = _best(lambda: pd.read_csv(csv, dtype=dtype, low_memory=False),
                            args.repeats)
        t_load, loaded = _best(lambda: load_table("chexpert", csv), args.repeats)
    assert len(loaded) == n
    path = raw["Path"].astype("string")
    t_parse, _ = _best(lambda: parse_paths(path, "bench"), args.repeats)
    t_extract, _ = _best(lambda: path.str.extract(EXTRACT), args.repeats)

    figures = {
        "rows": n,
        "read_csv_s": round(t_read, 4),
        "load_table_s": round(t_load, 4),
        "beyond_read_csv_s": round(t_load - t_read, 4),
        "load_over_read": round(t_load / t_read, 2),
        "parse_paths_s": round(t_parse, 4),
        "pandas_extract_s": round(t_extract, 4),
        "extract_over_parse": round(t_extract / t_parse, 2),
        "goal_load_over_read": GOAL_RATIO,
        "cpus": os.cpu_count(),
    }
    ok = t_load / t_read <= GOAL_RATIO
    print(f"rows                      {n}")
    print(f"read_csv                  {t_read:.3f} s")
    print(f"load_table('chexpert')    {t_load:.3f} s   ({t_load / t_read:.2f}x read_csv, "
          f"goal <= {GOAL_RATIO}x: {'ok' if ok else 'MISSED'})")
    print(f"beyond read_csv           {t_load - t_read:.3f} s")
    print(f"path parsing (pyarrow)    {t_parse:.3f} s")
    print(f"pandas str.extract        {t_extract:.3f} s   ({t_extract / t_parse:.1f}x slower)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_name(args.json.name + ".tmp")
        tmp_json.write_text(json.dumps(figures, indent=2) + "\n")
        os.replace(tmp_json, args.json)


if __name__ == "__main__":
    main()
