"""``medaug report``: the paper-style results table of a sweep, from its MLflow runs.

    medaug report --output runs/table1                       # vs the instance baseline
    medaug report --output runs/table1 --baseline baseline-imagenet
    medaug report --output runs/table1 --tracking-uri http://head:5000

Writes OUTPUT/report/results.md, results.csv and results.png, prints the table and puts it
into MLflow (the sweep's parent run and the experiment's description).  Per stage: AUC mean
± std, the difference from the baseline with its paired interval, the Holm-adjusted paired
t-test over the splits (``*`` significant, ``n.s.`` not) and the minimum detectable effect
(see :mod:`medaug.tune.report`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, metavar="DIR", help="the sweep's folder")
    parser.add_argument(
        "--tracking-uri", default=None, metavar="URI",
        help="MLflow tracking URI (default: the one the sweep used)",
    )
    parser.add_argument(
        "--baseline", default=None, metavar="NAME",
        help="row to compare with: a trial key, variant or baseline name "
        "(default: instance criterion, no crop, default negatives)",
    )


def run(args: argparse.Namespace) -> int:
    from medaug.tune.sweep import publish_report
    from medaug.tune.tracking import quiet_mlflow

    quiet_mlflow()
    table, paths = publish_report(args.output, args.tracking_uri, args.baseline)
    print(table.to_markdown())
    print(f"\nreport: {paths['markdown']}\n        {paths['csv']}\n        {paths['plot']}")
    return 0
