"""What the sweep platform (Ray Tune + Ray Train + MLflow) costs beyond the trials' own work.

Trials of the demo sweep's settings (the smoke phantom, Ray Train's local mode), run two at a
time, by a sweep and directly, each variant in a fresh Python process started here (a user's
command starts cold too):

* sweep: ``run_sweep`` (shared inputs, a local Ray, one Tune trial per trial, two slots, every
  run tracked in MLflow's SQLite store, the report);
* direct: the shared inputs (phantom, image cache) in one process, then the same trials in two
  processes side by side, each calling ``pretrain`` (the plain loop) and ``evaluate`` on the
  selected checkpoint for its half of the trials: no Ray, no MLflow.

Three figures:

* ``fixed_s``: the sweep's fixed cost, from the command's start to the first trial's first
  training step, plus the wind-down from the last trial's end to the command's exit (goal:
  at most 30 s);
* ``per_trial_s``: what each further trial adds beyond its own work: sweeps of 4 and 8 smoke
  trials (the four criteria, then each with and without the crop) against the same trials
  run directly, ``((sweep8 - direct8) - (sweep4 - direct4)) / 4`` (goal: at most 3 s);
* ``overhead_ratio``: a 4-trial sweep whose trials hold at least 60 s of work each (the smoke
  trials with more pretraining steps, scaled from the 4-trial direct run) against the same
  trials run directly: ``sweep / direct - 1`` (reported, not a goal).

    python benchmarks/bench_sweep.py [--json runs/bench/sweep.json] [--set KEY=VALUE ...]

``--set`` applies to every variant.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before any import: a variant's own start-up counts

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

CRITERIA = ["instance", "patient_same_study", "patient_all_studies", "patient_distinct_studies"]
SLOTS = 2
LONG_WORK_S = 60.0  # the least work of one trial for overhead_ratio


def _overrides(n_trials: int, extra: list[str]) -> list[str]:
    """The demo sweep as 4 trials (the criteria) or 8 (each with and without the crop)."""
    crops = "[null]" if n_trials == 4 else "[null, 0.95]"
    return [
        f"space.pretrain.criterion=[{', '.join(CRITERIA)}]",
        f"space.pretrain.crop_scale={crops}",
        "baselines=[]",
        f"tune.max_concurrent={SLOTS}",
        "pretrain.num_workers=0",  # the demo's own setting: Ray Train's local mode
        *extra,
    ]


def _sweep(output: Path, overrides: list[str]) -> object:
    from medaug.tune.space import load_sweep
    from medaug.tune.sweep import sweep_inputs

    sweep = load_sweep("demo", overrides, output=output, smoke=True)
    return sweep_inputs(sweep, output, smoke=True, progress=False)


def run_prepare(output: Path, overrides: list[str]) -> dict:
    """The direct variant's shared inputs: the smoke phantom and the image cache."""
    from medaug.engine.data import prepare_data

    sweep = _sweep(output, overrides)
    prepare_data(sweep.resolve(sweep.grid_trials()[0].params, output=str(output)), output,
                 progress=False)
    return {}


def run_direct(output: Path, overrides: list[str], part: int) -> dict:
    """Every ``SLOTS``-th trial from ``part``, one after the other, on one thread."""
    import torch

    torch.set_num_threads(1)
    from medaug.engine.checkpoint import best_checkpoint
    from medaug.engine.pretrain import pretrain
    from medaug.eval.evaluate import evaluate
    from medaug.eval.monitor import KnnMonitor

    # Each process draws the label splits into its own file (the same draws): no race.
    sweep = _sweep(output, [*overrides, f"eval.splits_csv={output / f'splits-{part}.csv'}"])
    work = {}
    for trial in sweep.grid_trials()[part::SLOTS]:
        folder = output / "trials" / trial.key
        cfg = sweep.resolve(trial.params, output=str(folder))
        t = time.perf_counter()
        pretrain(cfg, folder / "pretrain", None, resume=False, progress=False,
                 monitor=KnnMonitor)
        evaluate(cfg, best_checkpoint(folder / "pretrain"), folder / "eval", progress=False)
        work[trial.key] = time.perf_counter() - t
    return {"work_s": work}


def run_sweep_variant(output: Path, overrides: list[str]) -> dict:
    from medaug.tune.sweep import run_sweep

    table = run_sweep("demo", output, smoke=True, overrides=overrides, progress=False,
                      num_cpus=SLOTS)
    trials = sorted((output / "trials").iterdir())
    starts = []
    for t in trials:
        for line in (t / "pretrain" / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "start":
                starts.append(event["time"])
                break
    ends = [(t / "trial.json").stat().st_mtime for t in trials if (t / "trial.json").exists()]
    return {
        "finished": int((table.rows["status"] == "FINISHED").sum()),
        "trials": len(trials),
        "start": PROCESS_START,
        "first_step": min(starts),
        "last_end": max(ends),
    }


def _child(args: argparse.Namespace) -> int:
    output = Path(args.child_output)
    if args.variant == "sweep":
        out = run_sweep_variant(output, args.set)
    elif args.variant == "prepare":
        out = run_prepare(output, args.set)
    else:
        out = run_direct(output, args.set, int(args.variant[len("direct"):]))
    Path(args.child_json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _start(variant: str, output: Path, overrides: list[str]) -> tuple[subprocess.Popen, Path]:
    out_json = output.with_name(f"{output.name}-{variant}.json")
    cmd = [sys.executable, __file__, "--variant", variant, "--child-output", str(output),
           "--child-json", str(out_json)]
    for item in overrides:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out_json


def _finish(proc: subprocess.Popen, out_json: Path, what: str) -> dict:
    log, _ = proc.communicate()
    if proc.returncode != 0 or not out_json.exists():
        sys.stderr.write(log[-6000:])
        raise SystemExit(f"bench_sweep: {what} failed (exit {proc.returncode})")
    return json.loads(out_json.read_text())


def sweep_wall(output: Path, overrides: list[str]) -> dict:
    """One sweep command, timed from outside: wall, fixed cost (start-up to the first step,
    wind-down from the last trial's end to the exit)."""
    t = time.time()
    proc, out_json = _start("sweep", output, overrides)
    figures = _finish(proc, out_json, f"the sweep in {output}")
    end = time.time()
    if figures["finished"] != figures["trials"]:
        raise SystemExit(f"bench_sweep: {figures['trials'] - figures['finished']} trial(s) failed in {output}")
    figures["wall_s"] = end - t
    figures["startup_s"] = figures["first_step"] - figures["start"]
    figures["winddown_s"] = end - figures["last_end"]
    return figures


def direct_wall(output: Path, overrides: list[str]) -> dict:
    """The shared inputs, then the trials in ``SLOTS`` processes side by side, timed from
    outside."""
    t = time.time()
    proc, out_json = _start("prepare", output, overrides)
    _finish(proc, out_json, f"preparing {output}")
    started = [_start(f"direct{part}", output, overrides) for part in range(SLOTS)]
    work: dict[str, float] = {}
    for part, (proc, out_json) in enumerate(started):
        work.update(_finish(proc, out_json, f"direct part {part} in {output}")["work_s"])
    return {"wall_s": time.time() - t, "work_s": work}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to every variant")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return _child(args)

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    runs: dict[str, dict] = {}
    try:
        for name, n, make in [("direct4", 4, direct_wall), ("sweep4", 4, sweep_wall),
                              ("direct8", 8, direct_wall), ("sweep8", 8, sweep_wall)]:
            runs[name] = make(root / name, _overrides(n, args.set))
            print(f"{name}: {runs[name]['wall_s']:.1f} s", flush=True)
        # Longer trials: the pretraining steps scaled so that a trial's work reaches 60 s.
        smoke_work = min(runs["direct4"]["work_s"].values())
        scale = max(1, math.ceil(LONG_WORK_S / smoke_work))
        steps = 16 * scale  # the smoke run's steps per epoch
        long = _overrides(4, [*args.set, f"pretrain.max_steps_per_epoch={steps}"])
        for name, make in [("direct_long", direct_wall), ("sweep_long", sweep_wall)]:
            runs[name] = make(root / name, long)
            print(f"{name}: {runs[name]['wall_s']:.1f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    def extra(n: int) -> float:
        return runs[f"sweep{n}"]["wall_s"] - runs[f"direct{n}"]["wall_s"]

    fixed = runs["sweep4"]["startup_s"] + runs["sweep4"]["winddown_s"]
    per_trial = (extra(8) - extra(4)) / 4
    overhead = runs["sweep_long"]["wall_s"] / runs["direct_long"]["wall_s"] - 1
    long_work = min(runs["direct_long"]["work_s"].values())
    print(f"\n{SLOTS} slots, {os.cpu_count()} CPUs")
    print(f"fixed_s        {fixed:6.1f}  (start-up to the first step {runs['sweep4']['startup_s']:.1f} s "
          f"+ wind-down {runs['sweep4']['winddown_s']:.1f} s; goal <= 30)")
    print(f"per_trial_s    {per_trial:6.1f}  (sweep - direct: 4 trials {extra(4):.1f} s, "
          f"8 trials {extra(8):.1f} s; goal <= 3)")
    print(f"overhead_ratio {overhead:+6.1%}  (4 trials of >= {long_work:.0f} s of work: sweep "
          f"{runs['sweep_long']['wall_s']:.1f} s, direct {runs['direct_long']['wall_s']:.1f} s)")
    if long_work < LONG_WORK_S:
        print(f"note: the long trials held {long_work:.0f} s of work, less than {LONG_WORK_S:.0f} s")
    figures = {
        "fixed_s": fixed,
        "per_trial_s": per_trial,
        "overhead_ratio": overhead,
        "startup_s": runs["sweep4"]["startup_s"],
        "winddown_s": runs["sweep4"]["winddown_s"],
        "wall_s": {name: r["wall_s"] for name, r in runs.items()},
        "long_trial_work_s": long_work,
        "long_steps_per_epoch": steps,
        "slots": SLOTS,
        "cpus": os.cpu_count(),
        "goals": {"fixed_s": 30.0, "per_trial_s": 3.0},
        "overrides": args.set,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
