"""One trial of a sweep: pretrain on Ray Train, evaluate the selected checkpoint, track in MLflow.

:func:`run_trial` is the Ray Tune function trainable.  Everything it writes lives in the
trial's own folder ``OUTPUT/trials/<key>/`` whose name comes from the trial's resolved
params, not from Tune's ids, so a restarted trial (after a crash of the sweep, or a retry)
finds its work:

    config.yaml     the resolved config
    pretrain/       run_pretrain_ray's folder: checkpoints/, metrics.jsonl, summary.json
    eval/           evaluate's folder: results.json (per split, resumable), splits, roc.png
    trial.json      written last: the trial is complete (its metrics, its MLflow run, and
                    which sets selected the checkpoint and the probe epochs and which set
                    was tested)
    error.txt       the traceback of the last failure, if any

Rerunning a complete trial only makes sure its MLflow run holds the final metrics and
reports them to Tune again.  Pretraining resumes from the newest checkpoint; evaluation
skips the splits already scored.  The trial process logs everything to MLflow; the sweep
driver only closes the runs of trials that errored or that Tune stopped early (see
``medaug.tune.sweep``).  The trial's run is nested under the sweep's parent run and records
the trial's inputs: the metadata table and the label splits, with their digests.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medaug.config import Config, config_to_dict, flatten, write_config
from medaug.files import write_json_atomic
from medaug.pairs import criterion_label, resolve_criterion
from medaug.tune.space import BASELINE, VARIANT, SweepConfig, TrialSpec, trial_for_config
from medaug.tune.tracking import (
    METHOD_PARAMS,
    SUMMARY_PARAMS,
    Tracker,
    result_metrics,
    splits_record,
    table_record,
)

TRIALS_DIR = "trials"
DONE_FILE = "trial.json"
ERROR_FILE = "error.txt"


@dataclass
class SweepContext:
    """What every trial needs to know about its sweep (shipped to trials by Tune).

    Attributes:
        sweep: the validated sweep (with any smoke settings and shared paths applied).
        output: absolute sweep output folder.
        tracking_uri, sweep_id, artifact_location: the MLflow experiment of the sweep.
        parent_run_id: the sweep's MLflow run, which the trial runs nest under.
        order: trial key -> position in the plan (rows of the report follow it).
        log_checkpoint: also copy the selected checkpoint into the run's artifacts.
        progress: progress bars and per-epoch lines in the trial logs.
    """

    sweep: SweepConfig
    output: str
    tracking_uri: str
    sweep_id: str
    artifact_location: str | None = None
    parent_run_id: str | None = None
    order: dict[str, int] | None = None
    log_checkpoint: bool = False
    progress: bool = True

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.sweep.name, self.sweep_id, self.artifact_location)


def trial_dir(output: str | Path, key: str) -> Path:
    """``OUTPUT/trials/<key>``: the trial's folder, the same on every restart."""
    return Path(output) / TRIALS_DIR / key


def trial_params(cfg: Config, spec: TrialSpec) -> dict[str, Any]:
    """MLflow params of a trial: the flattened config plus top-level summary names (for a
    baseline, which pretrains nothing, the criterion names the baseline and the other
    summary names are ``-``, so that the runs table does not show pretraining choices)."""
    flat = flatten(config_to_dict(cfg))
    params: dict[str, Any] = dict(flat)
    summary = {**SUMMARY_PARAMS, **METHOD_PARAMS.get(cfg.pretrain.method, {})}
    for name, key in summary.items():
        params[name] = flat.get(key) if not spec.baseline else "-"
    if spec.baseline:
        params["criterion"] = f"{spec.baseline} (no pretraining)"
    else:  # criteria by their readable names (a grammar mapping is flattened)
        for name in ("criterion", "size_match", "anchors_with"):
            setting = getattr(cfg.pretrain, name)
            params[name] = None if setting is None else criterion_label(resolve_criterion(setting))
    params["trial_key"] = spec.key
    if spec.params.get(VARIANT) is not None:
        params["variant"] = spec.params[VARIANT]
    if spec.baseline:
        params["baseline"] = spec.baseline
    return params


def run_trial(config: dict[str, Any], ctx: SweepContext) -> dict[str, Any]:
    """The Tune function trainable: one trial, end to end, idempotent.

    Args:
        config: the Tune trial config (``{"trial": key}`` for grid sweeps, sampled params for
            Optuna sweeps).
        ctx: the sweep context.

    Returns:
        the final metrics (also reported to Tune: ``linear_auc_mean`` and friends).
    """
    from ray import tune

    spec = trial_for_config(ctx.sweep, config)
    metrics = execute_trial(spec, ctx)
    tune.report(_tune_metrics(metrics))
    return metrics


def execute_trial(spec: TrialSpec, ctx: SweepContext) -> dict[str, Any]:
    """Pretrain (unless a baseline), evaluate, log to MLflow; resume whatever is done.

    Returns:
        the trial's final metrics (MLflow names).
    """
    folder = trial_dir(ctx.output, spec.key)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = ctx.sweep.resolve(spec.params, output=str(folder))
    write_config(cfg, folder / "config.yaml")
    _limit_threads()

    tracker = ctx.tracker()
    run_id = tracker.start_trial(
        spec.key, spec.label, "baseline" if spec.baseline else "pretrain", ctx.parent_run_id
    )
    tags: dict[str, Any] = {"trial_dir": str(folder)}
    if ctx.order and spec.key in ctx.order:
        tags["trial_index"] = ctx.order[spec.key]
    if spec.params.get(VARIANT) is not None:
        tags["variant"] = spec.params[VARIANT]
    if spec.params.get(BASELINE):
        tags["baseline"] = spec.params[BASELINE]
    try:
        from ray import tune

        tags["tune_trial_id"] = tune.get_context().get_trial_id() or ""
    except Exception:  # outside a Tune session (direct calls, benchmarks)
        pass
    tracker.set_tags(run_id, tags)
    tracker.log_params(run_id, trial_params(cfg, spec))

    done_path = folder / DONE_FILE
    try:
        if done_path.exists():
            done = json.loads(done_path.read_text())
            metrics = done["metrics"]
            logged = tracker.client.get_run(run_id).data.metrics
            missing = {k: v for k, v in metrics.items() if k not in logged}
            if missing:
                tracker.log_metrics(run_id, missing)
            tracker.end_trial(run_id, "FINISHED")
            return metrics
        sets: dict[str, Any] = {}
        metrics = _run_stages(spec, cfg, folder, tracker, run_id, ctx, sets)
        tracker.end_trial(run_id, "FINISHED")
        write_json_atomic(done_path, {"key": spec.key, "run_id": run_id, "metrics": metrics, **sets})
        (folder / ERROR_FILE).unlink(missing_ok=True)
        return metrics
    except BaseException as err:
        (folder / ERROR_FILE).write_text("".join(traceback.format_exception(err)))
        # The run's final status is set by the sweep driver, which knows why the trial ended:
        # an error (FAILED) or Tune stopping it early, which also interrupts this code (KILLED).
        try:
            tracker.set_tags(run_id, {"error": f"{type(err).__name__}: {err}"[:500]})
        except Exception:  # the store being down must not hide the trial's own error
            pass
        raise


def _run_stages(
    spec: TrialSpec, cfg: Config, folder: Path, tracker: Tracker, run_id: str, ctx: SweepContext,
    sets: dict[str, Any],
) -> dict[str, Any]:
    """Pretraining and evaluation; fills ``sets`` with the record of which set selected the
    checkpoint and the probe epochs and which set was tested (see :func:`_sets_record`)."""
    from medaug.eval.evaluate import evaluate
    from medaug.tune.finetune_trainer import run_finetune_ray

    metrics: dict[str, Any] = {}
    checkpoint: Path | None = None
    if not spec.baseline:
        from medaug.engine.checkpoint import best_checkpoint
        from medaug.tune.pretrain_trainer import run_pretrain_ray

        pretrain_dir = folder / "pretrain"
        summary = run_pretrain_ray(cfg, pretrain_dir, resume=True, progress=ctx.progress)
        tracker.log_curves(run_id, summary.get("history") or [])
        checkpoint = best_checkpoint(pretrain_dir)
        best = summary.get("best_knn_auc")
        if best is not None and math.isfinite(float(best)):
            metrics["knn_auc_best"] = float(best)
        if summary.get("best_epoch") is not None:
            metrics["best_epoch"] = int(summary["best_epoch"])
        tracker.set_tags(run_id, {"checkpoint": str(checkpoint)})

    eval_dir = folder / "eval"
    runner = run_finetune_ray if cfg.eval.e2e_ray else None
    results = evaluate(cfg, checkpoint, eval_dir, baseline=spec.baseline, progress=ctx.progress,
                       finetune_runner=runner)
    target = cfg.data.target if cfg.data.target in cfg.eval.observations else cfg.eval.observations[0]
    metrics.update(result_metrics(results, target))
    tracker.log_metrics(run_id, metrics)
    tracker.log_datasets(run_id, _inputs(cfg, results))
    sets.update(_sets_record(results))
    tracker.set_tags(run_id, {f"{k}_set": _set_text(v) for k, v in sets.items()})

    tracker.log_artifact(run_id, folder / "config.yaml")
    tracker.log_artifact(run_id, eval_dir / "results.json")
    if results.get("splits_csv"):
        tracker.log_artifact(run_id, results["splits_csv"])
    if results.get("roc_png"):
        tracker.log_artifact(run_id, results["roc_png"])
    if checkpoint is not None:
        tracker.log_artifact(run_id, folder / "pretrain" / "metrics.jsonl")
        if ctx.log_checkpoint:
            tracker.log_artifact(run_id, checkpoint, "checkpoint")
    return metrics


def _sets_record(results: dict[str, Any]) -> dict[str, Any]:
    """``{"checkpoint_selection", "selection", "test"}``: the sets (name, rows, patients)
    that picked the pretraining checkpoint, that picked the evaluation's epochs, and that
    the reported AUCs were computed on."""
    pretraining = results.get("pretraining") or {}
    return {
        "checkpoint_selection": pretraining.get("selection"),
        "selection": results.get("selection"),
        "test": results.get("test"),
    }


def _set_text(entry: dict[str, Any] | None) -> str:
    """One line for an MLflow tag: ``train slice: 1200 images, 310 patients``."""
    if not entry:
        return "none"
    return f"{entry['name']}: {entry['rows']} images, {entry['patients']} patients"


def _tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Tune sees at the end of a trial (the searcher's metric among them)."""
    out = {
        k: v
        for k, v in metrics.items()
        if "/" not in k and "_split" not in k and isinstance(v, (int, float))
    }
    if "knn_auc_best" in out:
        out["knn_auc"] = out["knn_auc_best"]
    return out


def _inputs(cfg: Config, results: dict[str, Any]) -> list[Any]:
    """The trial's datasets for MLflow: the metadata table it read (as loaded, after any
    unreadable images were dropped) and the label splits its evaluation trained on."""
    from medaug.engine.data import prepare_data

    table = prepare_data(cfg, cfg.output, progress=False).table  # already loaded: memoised
    records = [table_record(table, cfg.data.csv, cfg.data.dataset)]
    if results.get("splits_csv") and Path(results["splits_csv"]).exists():
        records.append(splits_record(results["splits_csv"]))
    return records


def _limit_threads() -> None:
    """Keep the trial's own torch (evaluation) to the CPUs it reserved (at least one)."""
    try:
        import ray

        if not ray.is_initialized():
            return
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") or 0.0
    except Exception:  # outside a Ray worker: leave the process as it is
        return
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

