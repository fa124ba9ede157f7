"""Overhead of the sweep platform (Ray Tune + Ray Train + MLflow) over the bare work.

Runs the same four smoke trials (instance, same study, all studies, distinct studies on the
smoke phantom) twice, in this process, side by side:

* direct: ``pretrain`` (the plain loop) then ``evaluate`` on the best checkpoint, called one
  after the other with no Ray and no MLflow;
* sweep: ``run_sweep`` (Ray started here, a Tune trial per criterion, pretraining on Ray
  Train workers, every run tracked in MLflow's SQLite store, the report at the end).

and prints both wall times and the overhead ``sweep / direct - 1`` (goal: <= 20%).  Smoke
trials last seconds, so the platform's fixed costs (starting Ray, a Train worker group per
trial, the MLflow store) weigh far more here than on real trials that last hours.

    python benchmarks/bench_sweep.py [--json runs/bench/sweep.json] [--concurrent 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

CRITERIA = ["instance", "patient_same_study", "patient_all_studies", "patient_distinct_studies"]


def _sweep(output: Path, concurrent: int, extra: list[str]):
    from medaug.tune.space import load_sweep

    overrides = [
        f"space.pretrain.criterion=[{', '.join(CRITERIA)}]",
        "baselines=[]",
        f"tune.max_concurrent={concurrent}",
        *extra,
    ]
    if concurrent > 1:  # trial processes reserve no CPU: their workers do
        overrides += ["tune.resources.cpu=0"]
    return load_sweep("demo", overrides, output=output, smoke=True), overrides


def run_direct(output: Path, concurrent: int, extra: list[str]) -> dict:
    """The trials' work in this process: the plain pretraining loop, then the evaluation."""
    from medaug.engine.checkpoint import best_checkpoint
    from medaug.engine.data import prepare_data
    from medaug.engine.pretrain import pretrain
    from medaug.eval.evaluate import evaluate
    from medaug.tune.sweep import sweep_inputs

    t0 = time.perf_counter()
    sweep, _ = _sweep(output, concurrent, extra)
    sweep = sweep_inputs(sweep, output, smoke=True, progress=False)
    per_trial = {}
    for i, trial in enumerate(sweep.grid_trials()):
        folder = output / "trials" / trial.key
        cfg = sweep.resolve(trial.params, output=str(folder))
        if i == 0:
            prepare_data(cfg, output, progress=False)
        t = time.perf_counter()
        pretrain(cfg, folder / "pretrain", None, resume=False, progress=False)
        results = evaluate(cfg, best_checkpoint(folder / "pretrain"), folder / "eval", progress=False)
        per_trial[trial.key] = {
            "seconds": time.perf_counter() - t,
            "linear_auc_mean": results["linear"][cfg.data.target]["mean"],
        }
    return {"seconds": time.perf_counter() - t0, "trials": per_trial}


def run_platform(output: Path, concurrent: int, extra: list[str]) -> dict:
    """The same trials through run_sweep (Ray Tune, Ray Train, MLflow, report)."""
    from medaug.tune.sweep import run_sweep

    t0 = time.perf_counter()
    _, overrides = _sweep(output, concurrent, extra)
    table = run_sweep("demo", output, smoke=True, overrides=overrides, progress=False,
                      num_cpus=os.cpu_count())
    seconds = time.perf_counter() - t0
    rows = table.rows.set_index("key")
    return {
        "seconds": seconds,
        "finished": int((rows["status"] == "FINISHED").sum()),
        "trials": {k: {"linear_auc_mean": float(rows.loc[k, "linear_mean"])} for k in rows.index},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    parser.add_argument(
        "--concurrent", type=int, default=2, help="trials the sweep runs at once (default 2)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="longer trials, e.g. --set pretrain.epochs=3 --set pretrain.max_steps_per_epoch=20",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the direct run gets what one sweep trial gets: one core
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        direct = run_direct(root / "direct", args.concurrent, args.set)
        print(f"direct (pretrain + evaluate, in process): {direct['seconds']:.1f} s", flush=True)
        platform = run_platform(root / "sweep", args.concurrent, args.set)
        print(f"sweep (Ray Tune + Ray Train + MLflow):     {platform['seconds']:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    overhead = platform["seconds"] / direct["seconds"] - 1.0
    per_trial = sum(t["seconds"] for t in direct["trials"].values()) / len(direct["trials"])
    fixed = (platform["seconds"] - direct["seconds"]) / len(direct["trials"])
    # The platform's cost is about fixed per trial: the trial length that keeps it at 20%.
    break_even = fixed / 0.20
    print(f"overhead: {overhead:+.0%} of the direct time (goal <= +20%)")
    print(f"  direct work per trial {per_trial:.1f} s; platform cost per trial {fixed:+.1f} s "
          f"(with {args.concurrent} trial(s) at once on {os.cpu_count()} CPUs)")
    print(f"  the overhead falls to 20% for trials of {break_even:.0f} s of work or longer")
    figures = {
        "trials": len(direct["trials"]),
        "concurrent": args.concurrent,
        "cpus": os.cpu_count(),
        "direct_seconds": direct["seconds"],
        "sweep_seconds": platform["seconds"],
        "overhead_ratio": overhead,
        "direct_seconds_per_trial": per_trial,
        "platform_seconds_per_trial": fixed,
        "break_even_trial_seconds": break_even,
        "overrides": args.set,
        "sweep_finished_trials": platform["finished"],
        "goal_ratio": 0.20,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if platform["finished"] == len(direct["trials"]) else 1


if __name__ == "__main__":
    sys.exit(main())
