"""Overhead of the sweep platform (Ray Tune + Ray Train + MLflow) over the bare work.

The same four smoke trials (instance, same study, all studies, distinct studies on the smoke
phantom, the demo sweep's settings) are run by three variants, each in a fresh Python process
started here (so that none inherits another's imports; a user's command starts cold too),
in ``--repeats`` interleaved rounds (a noisy machine slows all variants alike) whose medians
are compared:

* direct: one process calls ``pretrain`` (the plain loop) then ``evaluate`` on the best
  checkpoint for each trial, with no Ray and no MLflow; once with torch's default threads
  (all cores) and once with one thread (what one trial of the sweep gets);
* sweep: ``run_sweep`` (a local Ray started, a Tune trial per criterion, two at a time,
  pretraining through Ray Train, every run tracked in MLflow's SQLite store, the report).

Printed: wall times, the overhead ``sweep / fastest direct - 1`` (goal: <= 20%) and where
the sweep's time goes: start-up (imports, Ray, the first trial processes), the trials
themselves (first trial start to last trial end) and the wind-down (Tune, report, Ray
shutdown).

    python benchmarks/bench_sweep.py [--json runs/bench/sweep.json] [--repeats 3] [--set KEY=VALUE ...]

``--set`` applies to both variants, e.g. longer trials:
``--set pretrain.epochs=2 --set pretrain.max_steps_per_epoch=20``.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before any import: the variant's own start-up counts

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

CRITERIA = ["instance", "patient_same_study", "patient_all_studies", "patient_distinct_studies"]
CONCURRENT = 2


def _overrides(extra: list[str]) -> list[str]:
    return [
        f"space.pretrain.criterion=[{', '.join(CRITERIA)}]",
        "baselines=[]",
        f"tune.max_concurrent={CONCURRENT}",
        *extra,
    ]


def run_direct(output: Path, extra: list[str], threads: int | None) -> dict:
    """The trials' work in this process: the plain pretraining loop, then the evaluation."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from medaug.engine.checkpoint import best_checkpoint
    from medaug.engine.data import prepare_data
    from medaug.engine.pretrain import pretrain
    from medaug.eval.evaluate import evaluate
    from medaug.eval.monitor import KnnMonitor
    from medaug.tune.space import load_sweep
    from medaug.tune.sweep import sweep_inputs

    imported = time.time()
    sweep = load_sweep("demo", _overrides(extra), output=output, smoke=True)
    sweep = sweep_inputs(sweep, output, smoke=True, progress=False)
    per_trial = {}
    for i, trial in enumerate(sweep.grid_trials()):
        folder = output / "trials" / trial.key
        cfg = sweep.resolve(trial.params, output=str(folder))
        if i == 0:
            prepare_data(cfg, output, progress=False)
        t = time.perf_counter()
        pretrain(cfg, folder / "pretrain", None, resume=False, progress=False,
                 monitor=KnnMonitor)
        results = evaluate(cfg, best_checkpoint(folder / "pretrain"), folder / "eval", progress=False)
        per_trial[trial.key] = {
            "seconds": time.perf_counter() - t,
            "linear_auc_mean": results["linear"][cfg.data.target]["mean"],
        }
    return {
        "imports_seconds": imported - PROCESS_START,
        "threads": torch.get_num_threads(),
        "trials": per_trial,
    }


def run_platform(output: Path, extra: list[str]) -> dict:
    """The same trials through run_sweep (Ray Tune, Ray Train, MLflow, report)."""
    from medaug.tune.sweep import run_sweep

    table = run_sweep("demo", output, smoke=True, overrides=_overrides(extra), progress=False,
                      num_cpus=os.cpu_count())
    done = time.time()
    rows = table.rows.set_index("key")
    trials = sorted((output / "trials").iterdir())
    starts = [(t / "config.yaml").stat().st_mtime for t in trials]
    ends = [(t / "trial.json").stat().st_mtime for t in trials if (t / "trial.json").exists()]
    return {
        "finished": int((rows["status"] == "FINISHED").sum()),
        "startup_seconds": min(starts) - PROCESS_START,
        "trials_seconds": max(ends) - min(starts) if ends else float("nan"),
        "winddown_seconds": done - max(ends) if ends else float("nan"),
        "trials": {k: {"linear_auc_mean": float(rows.loc[k, "linear_mean"])} for k in rows.index},
    }


def _child(args: argparse.Namespace) -> int:
    output = Path(args.child_output)
    if args.variant == "sweep":
        out = run_platform(output, args.set)
    else:
        out = run_direct(output, args.set, 1 if args.variant == "direct1" else None)
    out["seconds"] = time.time() - PROCESS_START
    Path(args.child_json).write_text(json.dumps(out, indent=2) + "\n")
    gc.freeze()  # both variants exit as the medaug command does (medaug.cli.entry)
    return 0


def _run_variant(variant: str, root: Path, extra: list[str]) -> dict:
    out_json = root / f"{variant}.json"
    cmd = [sys.executable, __file__, "--variant", variant, "--child-output",
           str(root / variant), "--child-json", str(out_json)]
    for item in extra:
        cmd += ["--set", item]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not out_json.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"bench_sweep: the {variant} run failed (exit {proc.returncode})")
    figures = json.loads(out_json.read_text())
    figures["wall_seconds"] = wall
    return figures


VARIANTS = {
    "direct": "direct, torch's default threads",
    "direct1": "direct, one thread",
    "sweep": "sweep (Ray Tune + Ray Train + MLflow)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="applied to both variants, e.g. --set pretrain.max_steps_per_epoch=20",
    )
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="rounds of the three variants, interleaved; medians are compared (default 3)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return _child(args)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    try:
        for r in range(args.repeats):
            for variant, label in VARIANTS.items():
                out = _run_variant(variant, root / f"round{r}", args.set)
                runs[variant].append(out)
                print(f"round {r + 1}/{args.repeats}  {label}: {out['wall_seconds']:.1f} s",
                      flush=True)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[variant])

    walls = {v: [r["wall_seconds"] for r in runs[v]] for v in VARIANTS}
    best_direct = min(med("direct", "wall_seconds"), med("direct1", "wall_seconds"))
    overhead = med("sweep", "wall_seconds") / best_direct - 1.0
    per_round = [
        s / min(d, d1) - 1.0 for s, d, d1 in zip(walls["sweep"], walls["direct"], walls["direct1"])
    ]
    work = [t["seconds"] for r in runs["direct1"] for t in r["trials"].values()]
    print(f"\nmedians over {args.repeats} round(s); the sweep runs tune.max_concurrent="
          f"{CONCURRENT} trials at once unless --set says otherwise:")
    for variant, label in VARIANTS.items():
        spread = f"  (range {min(walls[variant]):.1f}-{max(walls[variant]):.1f})" if args.repeats > 1 else ""
        print(f"  {label}: {med(variant, 'wall_seconds'):.1f} s{spread}")
    print(f"overhead: {overhead:+.0%} of the faster direct run (goal <= +20%); per round: "
          + ", ".join(f"{o:+.0%}" for o in per_round))
    print(f"  sweep: start-up {med('sweep', 'startup_seconds'):.1f} s (imports, Ray, first trial "
          f"processes), trials {med('sweep', 'trials_seconds'):.1f} s, wind-down "
          f"{med('sweep', 'winddown_seconds'):.1f} s (Tune, report, Ray shutdown)")
    print(f"  one trial's work, one thread, direct: {statistics.median(work):.1f} s (median)")
    direct, sweep = runs["direct"][0], runs["sweep"][0]
    figures = {
        "trials": len(sweep["trials"]),
        "concurrent": CONCURRENT,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "direct_seconds": med("direct", "wall_seconds"),
        "direct_threads": direct["threads"],
        "direct_one_thread_seconds": med("direct1", "wall_seconds"),
        "direct_imports_seconds": med("direct", "imports_seconds"),
        "direct_trial_seconds_one_thread": statistics.median(work),
        "sweep_seconds": med("sweep", "wall_seconds"),
        "sweep_startup_seconds": med("sweep", "startup_seconds"),
        "sweep_trials_seconds": med("sweep", "trials_seconds"),
        "sweep_winddown_seconds": med("sweep", "winddown_seconds"),
        "wall_seconds_per_round": walls,
        "overhead_ratio": overhead,
        "overhead_ratio_per_round": per_round,
        "goal_ratio": 0.20,
        "overrides": args.set,
        "sweep_finished_trials": [r["finished"] for r in runs["sweep"]],
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(r["finished"] == len(sweep["trials"]) for r in runs["sweep"]) else 1


if __name__ == "__main__":
    sys.exit(main())
