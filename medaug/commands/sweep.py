"""``medaug sweep``: run (or resume) a sweep of pretraining choices on Ray Tune, tracked in MLflow.

    medaug sweep --config sweeps/table1.yaml --output runs/table1 \\
        --set data.csv=/data/CheXpert-v1.0-small/train.csv --set pretrain.weights=/data/r18.pth
    medaug sweep --output runs/table1 --resume          # after a crash, a kill, a reboot
                                                         # (one driver per output at a time)
    medaug sweep --config table6 --output runs/t6-smoke --smoke    # seconds per trial
    medaug sweep --config table1 --output runs/x --dry-run --set ...  # the trials, nothing run
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, metavar="YAML",
        help="sweep file or shipped sweep name (table1..table6, full, demo); "
        "optional with --resume",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the sweep's folder")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a sweep key: data.csv=..., pretrain.epochs=2, "
        "space.pretrain.criterion=[instance,patient_same_study], tune.max_concurrent=2, ...",
    )
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --output")
    parser.add_argument(
        "--smoke", action="store_true",
        help="shrink every trial to seconds on a tiny phantom (every stage still runs)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, metavar="URI",
        help="MLflow tracking URI (default: sqlite:///OUTPUT/mlflow.db)",
    )
    parser.add_argument(
        "--address", default=None, metavar="ADDR",
        help="Ray cluster to run on ('auto': the running one, else a local Ray; default: a "
        "local Ray)",
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and list the trials, run nothing"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or trial logs")


def run(args: argparse.Namespace) -> int:
    from medaug.errors import MedaugError

    if args.config is None and not args.resume:
        raise MedaugError("give --config (a sweep file or name), or --resume an existing --output")
    if args.dry_run:
        return _dry_run(args)
    from medaug.tune.sweep import run_sweep

    table = run_sweep(
        args.config, args.output, resume=args.resume, smoke=args.smoke,
        tracking_uri=args.tracking_uri, overrides=args.set, progress=not args.quiet,
        ray_address=args.address, num_cpus=args.num_cpus,
    )
    failed = int((table.rows["status"] == "FAILED").sum()) if len(table.rows) else 0
    return 1 if failed else 0


def _dry_run(args: argparse.Namespace) -> int:
    from medaug.tune.space import load_sweep

    sweep = load_sweep(args.config, args.set, output=args.output, smoke=args.smoke)
    print(f"sweep {sweep.name}: {sweep.description}".rstrip(": "))
    if sweep.space.continuous:
        print(f"Optuna: {sweep.tune.num_samples} trials over "
              + ", ".join(f"{k} {r.kind}[{r.low:g}, {r.high:g}]" for k, r in sweep.space.ranges.items()))
        return 0
    trials = sweep.grid_trials()
    print(f"{len(trials)} trials:")
    for t in trials:
        print(f"  {t.key}")
    return 0
