"""``medaug demo``: the demo sweep end to end on the bundled phantom data.

    medaug demo --output runs/demo
    medaug demo --control --output runs/phantom_paper

Generates the phantom (CheXpert layout) in OUTPUT/data unless it is there already, runs the
``demo`` sweep (instance discrimination vs same study vs all studies vs distinct studies,
plus a random-init baseline), prints the results table, the report's files, and the command
and address that open the sweep's runs table in the MLflow UI.  Running it again on the same
folder resumes (or, when everything is done, only reprints the results); while it runs, a
second demo on the same folder is refused.

``--control`` runs the positive control instead: the ``phantom_paper`` sweep on a phantom of
the ``positive_control`` style, long enough for the encoders to learn, and prints the table a
second time against distinct studies, so both of the paper's orderings (same study over
instance, same study over distinct studies) can be read with their paired intervals.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Setup:
    """What a demo runs: its sweep and the phantom it draws for it."""

    sweep: str
    patients: int
    style: str
    # Rows the table is also printed against, besides the sweep's own baseline.
    also_against: tuple[str, ...] = ()
    image_size: int = 48
    seed: int = 0


# The demo's phantom: enough patients for pairs, label splits and a test set with both
# classes; drawn in well under a minute on two cores.
DEMO = Setup(sweep="demo", patients=160, style="original")
# The positive control: about 2,300 training films, 20 epochs per trial.
CONTROL = Setup(
    sweep="phantom_paper", patients=300, style="positive_control",
    also_against=("patient_distinct_studies",),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", default=None, metavar="DIR",
        help="the demo's folder (default runs/demo, or runs/phantom_paper with --control)",
    )
    parser.add_argument(
        "--control", action="store_true",
        help="the positive control (sweeps/phantom_paper.yaml, about 45 minutes on 2 CPUs)",
    )
    parser.add_argument(
        "--patients", type=int, default=None,
        help=f"phantom patients to generate (default {DEMO.patients}, {CONTROL.patients} with --control)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the sweep (e.g. pretrain.epochs=5, seed=1)",
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or trial logs")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medaug.data.phantom import make_phantom
    from medaug.tune.report import STATE_FILE, sweep_table
    from medaug.tune.sweep import run_sweep

    setup = CONTROL if args.control else DEMO
    output = Path(args.output or f"runs/{setup.sweep}").resolve()
    data = output / "data"
    make_phantom(
        data, n_patients=args.patients or setup.patients, image_size=setup.image_size,
        seed=setup.seed, progress=not args.quiet, style=setup.style,
    )
    resume = (output / STATE_FILE).exists()
    table = run_sweep(
        setup.sweep, output, resume=resume, overrides=args.set, progress=not args.quiet,
        num_cpus=args.num_cpus,
    )
    criteria = set(table.rows["criterion"]) if len(table.rows) else set()
    for row in setup.also_against:
        if row in criteria:  # not when --set dropped it from the sweep
            print()
            print(sweep_table(output, baseline=row).to_markdown())
    print(f"phantom data: {data}")
    if not args.control:
        print("At two epochs the demo shows the machinery, not an effect; the paper's orderings "
              "with their intervals: make control (medaug demo --control, about 45 minutes)")
    failed = int((table.rows["status"] == "FAILED").sum()) if len(table.rows) else 0
    return 1 if failed else 0
