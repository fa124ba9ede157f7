"""Speed and memory of the positive-pair engine at CheXpert scale, against its goals.

Figures (all measured in this process or its children, side by side):

- index build time of every registered criterion and of the paper's size-controlled,
  distinct-only and anchor-restricted variants (goal <= 1 s each), with the anchors each keeps;
- one epoch of partner sampling (goal <= 0.1 s);
- ``medaug pairs`` end to end on a CheXpert-format CSV, as a whole subprocess, against a
  subprocess that only reads the same CSV with pandas (goal: ratio <= 5x);
- peak memory (ru_maxrss) of the ``medaug pairs`` child (goal <= 1 GiB);
- a declarative criterion with two ``same`` columns, one ``distinct`` column, a ``within``
  window and ``max_partners`` (same patient and laterality, other studies at most 30 days
  apart, two partners at most), built in a child process on a CheXpert-sized table and on a
  MIMIC-CXR-sized one (goals <= 1 s and <= 2 s, peak memory of each child <= 1 GiB).

    python benchmarks/bench_pairs.py [--json PATH] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chexpert_shaped import make_chexpert_table, write_chexpert_csv  # noqa: E402

from medaug.pairs import PairSampler, build_pair_index, list_criteria  # noqa: E402

LABEL = "Pleural Effusion"
GOAL_BUILD_S = 1.0
GOAL_SAMPLE_S = 0.1
GOAL_E2E_RATIO = 5.0
GOAL_RSS_BYTES = 1 << 30

GOAL_GRAMMAR_S = {"chexpert": 1.0, "mimic": 2.0}
# MIMIC-CXR-JPG's sizes: 377,110 images, 65,379 patients, 227,835 studies, about a third of
# them lateral views.
MIMIC_SHAPE = {
    "n_images": 377_110,
    "n_patients": 65_379,
    "n_studies": 227_835,
    "lateral_share": 0.3,
}
GRAMMAR_CRITERION = {
    "same": ["patient_id", "view"],
    "distinct": ["study_id"],
    "within": {"study_days": 30},
    "max_partners": 2,
}

# The paper's controlled variants (Tables 3-5): (criterion, distinct_only, size_match,
# anchors_with).
VARIANTS = [
    ("patient_all_studies", True, "patient_distinct_studies", None),
    ("patient_same_study", False, "patient_same_study_same_lat", None),
    (
        "patient_same_study_same_lat",
        False,
        "patient_same_study_distinct_lat",
        "patient_same_study_distinct_lat",
    ),
    (
        "patient_same_study_distinct_lat",
        False,
        "patient_same_study_same_lat",
        "patient_same_study_distinct_lat",
    ),
]


def _best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock timings of ``fn()`` (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _run_child(argv: list[str]) -> tuple[float, int]:
    """Run a child process; return (wall seconds, its own peak RSS in bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"child {argv[:4]} failed ({proc.returncode}): {err.strip()}")
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return wall, rss


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_builds(table, repeats: int) -> tuple[dict[str, float], dict[str, int], bool]:
    """Best-of-``repeats`` build time and anchors of every criterion and the paper's variants."""
    builds: dict[str, float] = {}
    anchors: dict[str, int] = {}
    passed = True
    runs = [(c, False, None, None) for c in list_criteria()] + VARIANTS
    for criterion, distinct_only, size_match, anchors_with in runs:
        name = (
            criterion
            + (" +distinct" if distinct_only else "")
            + (f" ~{size_match}" if size_match else "")
            + (f" @{anchors_with}" if anchors_with else "")
        )
        options = dict(
            distinct_only=distinct_only, size_match=size_match, anchors_with=anchors_with
        )
        seconds = _best(
            lambda c=criterion, o=options: build_pair_index(table, c, label=LABEL, **o), repeats
        )
        builds[name] = seconds
        anchors[name] = len(build_pair_index(table, criterion, label=LABEL, **options))
        ok = seconds <= GOAL_BUILD_S
        passed &= ok
        print(
            f"build {name:<110} {seconds:7.3f} s  {verdict(ok)} (goal <= {GOAL_BUILD_S} s); "
            f"{anchors[name]} anchors"
        )
    return builds, anchors, passed


def bench_sampling(table, repeats: int) -> tuple[float, bool]:
    """Best-of-``repeats`` time of one epoch of partner draws (all-studies sets)."""
    index = build_pair_index(table, "patient_all_studies")
    sampler = PairSampler(index, seed=0)
    epochs = iter(range(10**6))
    seconds = _best(lambda: sampler.sample(next(epochs)), repeats)
    ok = seconds <= GOAL_SAMPLE_S
    print(
        f"sample one epoch ({len(index)} anchors): {seconds:.4f} s  {verdict(ok)} "
        f"(goal <= {GOAL_SAMPLE_S} s)"
    )
    return seconds, ok


def with_study_days(table, seed: int = 0):
    """``table`` with a ``study_days`` column: each patient's studies in order, a few days to
    a few months apart (exponential gaps, mean 60 days), every image of a study on its day."""
    rng = np.random.default_rng(seed)
    studies = table.loc[:, ["patient_id", "study_id"]].drop_duplicates()
    gaps = rng.exponential(60.0, len(studies)).round()
    first = ~studies["patient_id"].duplicated().to_numpy()
    gaps[first] = rng.integers(0, 3000, int(first.sum()))  # the patient's first study
    days = pd.Series(gaps, index=studies.index).groupby(studies["patient_id"].to_numpy()).cumsum()
    by_study = dict(zip(studies["study_id"], days.to_numpy()))
    return table.assign(study_days=table["study_id"].map(by_study).astype(np.float64))


def grammar_child(shape: str, repeats: int) -> dict[str, float]:
    """Build :data:`GRAMMAR_CRITERION` on a generated table (in this process: the caller's
    child), returning the best time, the anchors and sets, and this process's peak memory."""
    import resource

    sizes = MIMIC_SHAPE if shape == "mimic" else {}
    table = with_study_days(make_chexpert_table(seed=1, **sizes))
    built = []
    seconds = _best(
        lambda: built.append(build_pair_index(table, GRAMMAR_CRITERION, label=LABEL, seed=0)),
        repeats,
    )
    index = built[-1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "n_images": len(table),
        "n_anchors": len(index),
        "n_with_partner": int((~index.fallback).sum()),
        "peak_rss_bytes": rss * (1 if sys.platform == "darwin" else 1024),
    }


def bench_grammar(repeats: int) -> tuple[dict[str, object], bool]:
    """The declarative criterion on CheXpert- and MIMIC-sized tables, each in a child."""
    out: dict[str, object] = {}
    passed = True
    for shape in ("chexpert", "mimic"):
        proc = subprocess.run(
            [sys.executable, __file__, "--grammar-child", shape, "--repeats", str(repeats)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"grammar child ({shape}) failed: {proc.stderr.strip()}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        goal = GOAL_GRAMMAR_S[shape]
        ok_time = got["seconds"] <= goal
        ok_rss = got["peak_rss_bytes"] <= GOAL_RSS_BYTES
        passed &= ok_time and ok_rss
        print(
            f"declarative criterion on a {shape}-sized table ({got['n_images']} images): "
            f"{got['seconds']:.3f} s  {verdict(ok_time)} (goal <= {goal} s); peak memory "
            f"{got['peak_rss_bytes'] / 2**20:.0f} MiB  {verdict(ok_rss)}; {got['n_anchors']} "
            f"anchors, {got['n_with_partner']} with a partner"
        )
        out[f"grammar_build_s_{shape}"] = got["seconds"]
        out[f"grammar_peak_rss_bytes_{shape}"] = got["peak_rss_bytes"]
        out[f"grammar_n_with_partner_{shape}"] = got["n_with_partner"]
    return out, passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write all figures here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the CSV goes (default: a temp dir)")
    parser.add_argument("--grammar-child", choices=("chexpert", "mimic"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grammar_child:
        print(json.dumps(grammar_child(args.grammar_child, args.repeats)))
        return 0

    figures: dict[str, object] = {}
    passed = True
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        table = make_chexpert_table()
        csv = write_chexpert_csv(table, Path(tmp) / "train.csv")
        print(
            f"table: {len(table)} images, {table['patient_id'].nunique()} patients, "
            f"{table['study_id'].nunique()} studies, "
            f"{100 * (table['view'] == 'lateral').mean():.1f}% lateral "
            f"(generated and written in {time.perf_counter() - start:.1f} s)"
        )
        figures["n_images"] = len(table)

        builds, anchors, ok = bench_builds(table, args.repeats)
        passed &= ok
        figures["build_seconds"] = builds
        figures["n_anchors"] = anchors
        sample_s, ok = bench_sampling(table, max(args.repeats, 5))
        passed &= ok
        figures["sample_epoch_seconds"] = sample_s
        grammar, ok = bench_grammar(args.repeats)
        passed &= ok
        figures.update(grammar)
        del table

        out = Path(tmp) / "pairs.json"
        pairs_cmd = [
            sys.executable,
            "-m",
            "medaug.cli",
            "pairs",
            "--dataset",
            "chexpert",
            "--csv",
            str(csv),
            "--criterion",
            "patient_distinct_studies",
            "--label",
            LABEL,
            "--json",
            str(out),
        ]
        read_cmd = [sys.executable, "-c", f"import pandas; pandas.read_csv({str(csv)!r})"]
        pairs_runs, read_runs, rss_runs = [], [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            wall, _ = _run_child(read_cmd)
            read_runs.append(wall)
            wall, rss = _run_child(pairs_cmd)
            pairs_runs.append(wall)
            rss_runs.append(rss)
        stats = json.loads(out.read_text())
        pairs_s, read_s, rss = min(pairs_runs), min(read_runs), max(rss_runs)
        ratio = pairs_s / read_s
        ok = ratio <= GOAL_E2E_RATIO
        passed &= ok
        print(
            f"medaug pairs end to end: {pairs_s:.2f} s; pandas read_csv alone: {read_s:.2f} s; "
            f"ratio {ratio:.2f}x  {verdict(ok)} (goal <= {GOAL_E2E_RATIO}x)"
        )
        ok = rss <= GOAL_RSS_BYTES
        passed &= ok
        print(
            f"peak memory of medaug pairs: {rss / 2**20:.0f} MiB  {verdict(ok)} "
            f"(goal <= {GOAL_RSS_BYTES / 2**30:.0f} GiB)"
        )
        dis = stats["label_disagreement"]
        print(
            f"(distinct studies: {100 * stats['n_fallback'] / stats['n_anchors']:.1f}% fallback, "
            f"{100 * dis['share_all_different']:.1f}% of sets all of the other label)"
        )
        figures.update(
            e2e_pairs_seconds=pairs_s,
            e2e_read_csv_seconds=read_s,
            e2e_ratio=ratio,
            e2e_pairs_runs=pairs_runs,
            e2e_read_csv_runs=read_runs,
            pairs_peak_rss_bytes=rss,
            goals={
                "build_seconds": GOAL_BUILD_S,
                "grammar_build_s_chexpert": GOAL_GRAMMAR_S["chexpert"],
                "grammar_build_s_mimic": GOAL_GRAMMAR_S["mimic"],
                "sample_epoch_seconds": GOAL_SAMPLE_S,
                "e2e_ratio": GOAL_E2E_RATIO,
                "pairs_peak_rss_bytes": GOAL_RSS_BYTES,
            },
            passed=bool(passed),
        )
    print("all goals met" if passed else "some goals missed")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = path.with_name(path.name + ".tmp")
        tmp_json.write_text(json.dumps(figures, indent=2, default=float) + "\n")
        os.replace(tmp_json, path)
    return 0 if passed else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
