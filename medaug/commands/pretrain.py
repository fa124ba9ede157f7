"""``medaug pretrain``: one MoCo v2 pretraining job, on Ray Train by default.

    medaug pretrain --config sweeps/demo.yaml --set pretrain.epochs=5 --output runs/pt

Everything that can be checked is checked before training starts.  The output folder gets
the resolved ``config.yaml``, ``checkpoints/`` (the last few epochs and ``best``),
``metrics.jsonl`` (one line per epoch), ``summary.json`` and ``best.json``; running the same
command again continues where the previous run stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
        help="override one config value, e.g. --set pretrain.epochs=5 (repeatable)",
    )
    parser.add_argument("--output", metavar="DIR", help="run folder (default: the config's output)")
    parser.add_argument("--no-ray", action="store_true",
                        help="train in this process instead of on Ray Train workers")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a previous run in the output folder instead of resuming it")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from medaug.config import load_config, write_config
    from medaug.engine.pretrain import CONFIG_FILE, check_pretrain

    cfg = load_config(args.config, args.overrides)
    if args.output:
        cfg.output = args.output
    out_dir = Path(cfg.output)
    check_pretrain(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out_dir / CONFIG_FILE)
    progress = not args.quiet
    if args.no_ray:
        from medaug.engine.pretrain import pretrain
        from medaug.eval.monitor import KnnMonitor

        summary = pretrain(cfg, out_dir, None, resume=not args.fresh, progress=progress,
                           monitor=KnnMonitor)
    else:
        from medaug.tune.pretrain_trainer import run_pretrain_ray

        summary = run_pretrain_ray(cfg, out_dir, resume=not args.fresh, progress=progress)

    auc = summary.get("best_knn_auc")
    auc_text = "n/a (no kNN monitor)" if auc is None else f"{auc:.4f}"
    print(f"best epoch:      {summary.get('best_epoch')}")
    print(f"best kNN AUC:    {auc_text}")
    print(f"best checkpoint: {summary.get('best_checkpoint')}")
    print(f"run folder:      {out_dir}")
    return 0
