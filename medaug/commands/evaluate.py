"""``medaug evaluate``: the nested label-scarce evaluation of a checkpoint or a baseline.

    medaug evaluate --checkpoint runs/pt --output runs/pt/eval
    medaug evaluate --baseline random --config sweeps/demo.yaml --set eval.e2e=true

With a checkpoint and no ``--config``, the checkpoint's own saved config is the base (so the
same data is used); ``--set`` overrides apply on top.  The output folder gets
``results.json``, ``splits.csv``, ``roc.png`` and the resolved ``config.yaml``; running the
same command again skips what is already done.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH",
                        help="pretraining run folder, checkpoint folder or state file")
    source.add_argument("--baseline", choices=["random", "imagenet"],
                        help="evaluate a baseline encoder instead (imagenet: pretrain.weights)")
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: see above)")
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
        help="override one config value, e.g. --set eval.e2e=true (repeatable)",
    )
    parser.add_argument("--output", metavar="DIR",
                        help="results folder (default: <config output>/eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _fmt(v) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def format_table(results: dict) -> str:
    """Per split and mean ± std (sample std) of every observation, linear and end-to-end."""
    lines = []
    for kind, title in (("linear", "linear probe"), ("e2e", "end-to-end")):
        entry = results.get(kind)
        if not entry:
            continue
        for obs, item in entry.items():
            lines.append(f"{title} - {obs} ({results.get('level', 'image')} level)")
            lines.append(f"  {'split':>5}  {'AUC':>6}  {'95% CI':>17}  {'epoch':>5}")
            for r in item["per_split"]:
                lines.append(f"  {r['split']:>5}  {_fmt(r['auc'])}  "
                             f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]  {r['best_epoch']:>5}")
            std = item.get("std")
            lines.append(f"  {'mean':>5}  {_fmt(item['mean'])} ± "
                         f"{_fmt(std).strip()} (n = {item['n']})")
            lines.append("")
    return "\n".join(lines).rstrip()


def run(args: argparse.Namespace) -> int:
    from medaug.config import build_config, load_config
    from medaug.errors import MedaugError
    from medaug.eval.evaluate import evaluate

    if args.config or args.baseline:
        cfg = load_config(args.config, args.overrides)
    else:
        from medaug.engine.checkpoint import load_state

        if not Path(args.checkpoint).exists():
            raise MedaugError(f"checkpoint {args.checkpoint} does not exist")
        saved = dict(load_state(args.checkpoint).get("config") or {})
        saved.pop("eval", None)  # the protocol comes from the defaults and --set, not the run
        cfg = build_config(saved, args.overrides)
    out_dir = Path(args.output) if args.output else Path(cfg.output) / "eval"
    runner = None
    if cfg.eval.e2e and cfg.eval.e2e_ray:
        from medaug.tune.finetune_trainer import run_finetune_ray as runner
    results = evaluate(cfg, args.checkpoint, out_dir, baseline=args.baseline,
                       progress=not args.quiet, finetune_runner=runner)
    print(format_table(results))
    print(f"\nresults: {out_dir / 'results.json'}")
    if results.get("roc_png"):
        print(f"ROC:     {results['roc_png']}")
    return 0
