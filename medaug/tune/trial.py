"""One trial of a sweep: pretrain on Ray Train, evaluate the selected checkpoint, track in MLflow.

:func:`run_trial` is the Ray Tune function trainable.  Everything it writes lives in the
trial's own folder ``OUTPUT/trials/<key>/`` whose name comes from the trial's resolved
params, not from Tune's ids, so a restarted trial (after a crash of the sweep, or a retry)
finds its work:

    config.yaml     the resolved config
    pretrain/       run_pretrain_ray's folder: checkpoints/, metrics.jsonl, summary.json
    eval/           evaluate's folder: results.json (per split, resumable), splits, roc.png
    trial.json      written last: the trial is complete (its metrics, its MLflow run)
    error.txt       the traceback of the last failure, if any

Rerunning a complete trial only makes sure its MLflow run holds the final metrics and
reports them to Tune again.  Pretraining resumes from the newest checkpoint; evaluation
skips the splits already scored.  The trial process logs everything to MLflow; the sweep
driver only closes the runs of trials that errored or that Tune stopped early (see
``medaug.tune.sweep``).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medaug.config import Config, config_to_dict, flatten, write_config
from medaug.errors import MedaugError
from medaug.tune.space import BASELINE, VARIANT, SweepConfig, TrialSpec, trial_for_config
from medaug.tune.tracking import SUMMARY_PARAMS, Tracker, result_metrics

TRIALS_DIR = "trials"
DONE_FILE = "trial.json"
ERROR_FILE = "error.txt"
INPUTS_FILE = "inputs.json"  # in OUTPUT: written by the driver once the shared inputs exist
INPUTS_NOTE_SECONDS = 30.0


@dataclass
class SweepContext:
    """What every trial needs to know about its sweep (shipped to trials by Tune).

    Attributes:
        sweep: the validated sweep (with any smoke settings and shared paths applied).
        output: absolute sweep output folder.
        tracking_uri, sweep_id, artifact_location: the MLflow experiment of the sweep.
        order: trial key -> position in the plan (rows of the report follow it).
        log_checkpoint: also copy the selected checkpoint into the run's artifacts.
        progress: progress bars and per-epoch lines in the trial logs.
        wait_inputs: the driver prepares the shared inputs (image cache, MLflow store) while
            the first trial processes start: a trial imports what it needs, then waits for
            ``OUTPUT/inputs.json`` (see :func:`wait_for_inputs`).
    """

    sweep: SweepConfig
    output: str
    tracking_uri: str
    sweep_id: str
    artifact_location: str | None = None
    order: dict[str, int] | None = None
    log_checkpoint: bool = False
    progress: bool = True
    wait_inputs: bool = False

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.sweep.name, self.sweep_id, self.artifact_location)


def trial_dir(output: str | Path, key: str) -> Path:
    """``OUTPUT/trials/<key>``: the trial's folder, the same on every restart."""
    return Path(output) / TRIALS_DIR / key


def trial_params(cfg: Config, spec: TrialSpec) -> dict[str, Any]:
    """MLflow params of a trial: the flattened config plus top-level summary names."""
    flat = flatten(config_to_dict(cfg))
    params: dict[str, Any] = dict(flat)
    for name, key in SUMMARY_PARAMS.items():
        params[name] = flat.get(key)
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
    if ctx.wait_inputs:
        _preload()
        wait_for_inputs(ctx.output, ctx.progress)

    tracker = ctx.tracker()
    run_id = tracker.start_trial(spec.key, spec.label, "baseline" if spec.baseline else "pretrain")
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
        metrics = _run_stages(spec, cfg, folder, tracker, run_id, ctx)
        tracker.end_trial(run_id, "FINISHED")
        _write_json(done_path, {"key": spec.key, "run_id": run_id, "metrics": metrics})
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
    spec: TrialSpec, cfg: Config, folder: Path, tracker: Tracker, run_id: str, ctx: SweepContext
) -> dict[str, Any]:
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


def write_inputs_state(output: str | Path, error: BaseException | None = None) -> None:
    """Tell waiting trials that the sweep's shared inputs are ready (or why they failed)."""
    state: dict[str, Any] = {"ok": error is None}
    if error is not None:
        state["error"] = f"{type(error).__name__}: {error}"
    _write_json(Path(output) / INPUTS_FILE, state)


def wait_for_inputs(output: str | Path, progress: bool = True, poll: float = 0.1) -> None:
    """Block until the driver has written ``OUTPUT/inputs.json``; raise if it reports a
    failure.  A trial never waits past its driver: Ray ends the trial processes of a job
    whose driver is gone."""
    path = Path(output) / INPUTS_FILE
    start = time.monotonic()
    note = INPUTS_NOTE_SECONDS
    while not path.exists():
        time.sleep(poll)
        waited = time.monotonic() - start
        if progress and waited >= note:
            print(f"waiting for the sweep's shared inputs (image cache, MLflow store): "
                  f"{waited:.0f} s", flush=True)
            note *= 2
    state = json.loads(path.read_text())
    if not state.get("ok"):
        raise MedaugError(f"the sweep's shared inputs could not be prepared: {state.get('error')}")


def _preload() -> None:
    """Import what the trial will use (torch, torchvision, MLflow, Ray Train), so that a
    new trial process does it while the driver is still preparing the shared inputs."""
    import mlflow  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import ray.train.torch  # noqa: F401

    import medaug.eval.evaluate  # noqa: F401
    import medaug.moco.model  # noqa: F401
    import medaug.tune.pretrain_trainer  # noqa: F401


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
