"""Ray Train/Tune adapters, sweep spaces, MLflow tracking, the sweep driver and its report.

Names load on first use, so ``from medaug.tune import load_sweep`` imports neither Ray nor
MLflow.
"""

from __future__ import annotations

from medaug._lazy import lazy_getattr

_LAZY = {
    "SweepConfig": "medaug.tune.space",
    "TrialSpec": "medaug.tune.space",
    "load_sweep": "medaug.tune.space",
    "list_sweeps": "medaug.tune.space",
    "smoke_sweep": "medaug.tune.space",
    "tune_param_space": "medaug.tune.space",
    "run_sweep": "medaug.tune.sweep",
    "run_trial": "medaug.tune.trial",
    "execute_trial": "medaug.tune.trial",
    "SweepContext": "medaug.tune.trial",
    "Tracker": "medaug.tune.tracking",
    "default_tracking_uri": "medaug.tune.tracking",
    "ResultTable": "medaug.tune.report",
    "build_table": "medaug.tune.report",
    "write_report": "medaug.tune.report",
    "run_pretrain_ray": "medaug.tune.pretrain_trainer",
    "run_finetune_ray": "medaug.tune.finetune_trainer",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
