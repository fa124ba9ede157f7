"""Run a medaug sweep on the Ray cluster this script lands on (or locally when there is none).

The documented way to launch a sweep on the cluster of ``cluster/cluster.yaml``::

    ray submit cluster/cluster.yaml sweeps/sweep.py -- \\
        --config ~/medaug/sweeps/table1.yaml --output /mnt/medaug/runs/table1 \\
        --set data.csv=/mnt/medaug/data/CheXpert-v1.0-small/train.csv \\
        --set pretrain.weights=/mnt/medaug/weights/resnet18-imagenet.pth

and after an interruption the same command with ``--resume``.  On a cluster the trials are
tracked by the MLflow server on the head node (``--tracking-uri auto``: port 5000 of the
head, when it answers); elsewhere in ``sqlite:///OUTPUT/mlflow.db``.  The shared inputs are
prepared before the script joins the cluster (``--address auto``; a local Ray when none
runs).
"""

from __future__ import annotations

import argparse
import socket
import sys

MLFLOW_PORT = 5000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="run or resume a medaug sweep on Ray")
    parser.add_argument("--config", default=None, help="sweep file or shipped sweep name")
    parser.add_argument("--output", required=True, help="the sweep's folder (shared storage)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--tracking-uri", default="auto",
        help="MLflow URI; 'auto': the head's MLflow server on a cluster, else the sweep's SQLite",
    )
    parser.add_argument(
        "--address", default="auto", help="Ray address ('auto': the running cluster, if any)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def head_tracking_uri() -> str | None:
    """``http://<this node>:5000`` when an MLflow server answers there, else None.

    The driver runs on the head node (``ray submit``), where ``cluster/cluster.yaml`` starts
    the MLflow tracking server.
    """
    from ray.util import get_node_ip_address

    host = get_node_ip_address()
    try:
        with socket.create_connection((host, MLFLOW_PORT), timeout=2):
            return f"http://{host}:{MLFLOW_PORT}"
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medaug.errors import MedaugError
    from medaug.tune.sweep import run_sweep

    try:
        if args.config is None and not args.resume:
            raise MedaugError("give --config, or --resume an existing --output")
        uri = args.tracking_uri
        if uri == "auto":  # a resumed sweep keeps the store it started with
            uri = None if args.resume else head_tracking_uri()
        table = run_sweep(
            args.config, args.output, resume=args.resume, smoke=args.smoke, tracking_uri=uri,
            overrides=args.set, progress=not args.quiet, ray_address=args.address or None,
            num_cpus=args.num_cpus,
        )
    except MedaugError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    failed = int((table.rows["status"] == "FAILED").sum()) if len(table.rows) else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
