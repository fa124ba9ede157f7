"""Data-parallel pretraining through Ray Train (the V2 API of Ray 2.5x/2.6x).

:func:`run_pretrain_ray` runs :func:`medaug.engine.pretrain.pretrain` on
``pretrain.num_workers`` workers of a ``TorchTrainer`` (gloo on CPU, NCCL on GPU; the
engine wraps the query encoder in DDP once ``torch.distributed`` is up).  Every epoch the
workers call ``ray.train.report``; on checkpoint epochs rank 0 attaches the checkpoint
folder it just wrote, which Ray copies into ``OUT/ray/pretrain``.  A crashed worker makes
Ray restart the whole group (up to ``pretrain.max_failures`` times); the new workers resume
from ``ray.train.get_checkpoint()`` or from ``OUT/checkpoints``, whichever is newer.

Inside a Ray Tune trial the same call works unchanged: the run's metrics are forwarded to
Tune (``TuneReportCallback``), and the trial process only needs resources for itself; the
training workers ask for their own (``pretrain.num_workers`` x ``pretrain.cpus_per_worker``
CPUs, one GPU each with ``pretrain.use_gpu``).

``pretrain.num_workers: 0`` is Ray Train's local mode: the same ``TorchTrainer.fit`` runs
the training function in the calling process, with no worker group to start (on a small
machine that start-up takes longer than a short trial: a new process per worker, torch and
torchvision imported there, a process group).  The caller's process then needs the
training's resources (a sweep reserves them for its trial processes, see
``medaug.tune.sweep.trial_resources``); each epoch's metrics go straight to Tune when in a
trial; a crash is retried by Tune (``tune.max_failures``) or by rerunning, and training
resumes from ``OUT/checkpoints`` either way.

Fault injection for tests: when the environment of the calling process holds
``MEDAUG_FAULT_EPOCH=N`` and ``MEDAUG_FAULT_MARKER=PATH``, the last worker exits abruptly
after epoch N, once (the marker file records that it happened).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from medaug.config import Config, build_config, config_to_dict
from medaug.errors import MedaugError

__all__ = ["run_pretrain_ray"]

RAY_DIR = "ray"
RUN_NAME = "pretrain"
FAULT_EPOCH_ENV = "MEDAUG_FAULT_EPOCH"
FAULT_MARKER_ENV = "MEDAUG_FAULT_MARKER"


def _fault_from_env() -> dict[str, Any] | None:
    epoch, marker = os.environ.get(FAULT_EPOCH_ENV), os.environ.get(FAULT_MARKER_ENV)
    if not epoch or not marker:
        return None
    return {"epoch": int(epoch), "marker": marker}


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the plain pretraining loop with a Ray ``report``.

    In local mode inside a Tune trial, Ray routes reports to Tune's API (its ``ray.train``
    functions refuse to run in a Tune session): the epoch metrics go to ``tune.report``.
    """
    import ray.train

    from medaug.engine.pretrain import pretrain
    from medaug.eval.monitor import KnnMonitor

    cfg = build_config(config["cfg"])
    out_dir = Path(config["out_dir"])
    fault = config.get("fault")
    to_tune = config.get("local") and _in_tune_session()
    if to_tune:
        rank, world = 0, 1
    else:
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        if fault and metrics["epoch"] == fault["epoch"] and rank == world - 1:
            marker = Path(fault["marker"])
            if not marker.exists():
                marker.write_text(f"worker {rank} exited after epoch {metrics['epoch']}\n")
                os._exit(1)  # an abrupt crash: no cleanup, no exception handling
        if to_tune:
            from ray import tune

            tune.report(dict(metrics))
        elif checkpoint_dir is not None:
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir))
            )
        else:
            ray.train.report(metrics)

    restored = None if config.get("local") else ray.train.get_checkpoint()
    if restored is None:
        pretrain(cfg, out_dir, report, resume=True, progress=config["progress"],
                 monitor=KnnMonitor)
    else:
        with restored.as_directory() as folder:
            pretrain(cfg, out_dir, report, resume=True, resume_from=folder,
                     progress=config["progress"], monitor=KnnMonitor)


def _in_tune_session() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session as in_session
    except ImportError:  # Tune not installed
        return False
    return in_session()


def worker_error(err: Exception) -> MedaugError | None:
    """The MedaugError behind a failed Ray Train run, if a worker raised one."""
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        seen = failure
        for _ in range(5):  # walk the cause chain of Ray's wrappers
            if isinstance(seen, MedaugError):
                return seen
            cause = getattr(seen, "cause", None) or seen.__cause__
            if cause is None:
                break
            seen = cause
        text = str(failure)
        if "MedaugError: " in text:
            return MedaugError(text.split("MedaugError: ", 1)[1].splitlines()[0])
    return None


def run_pretrain_ray(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    *,
    progress: bool = True,
    callbacks: list | None = None,
) -> dict:
    """Pretrain with ``cfg.pretrain.num_workers`` Ray Train workers (0: local mode).

    Args:
        cfg: the resolved config.
        out_dir: the run folder (as in :func:`medaug.engine.pretrain.pretrain`); Ray's own
            state lives in ``out_dir/ray``.  On several nodes it must be shared storage.
        resume: continue a previous run in ``out_dir``; False clears it first.
        progress: progress bar and per-epoch lines (rank 0; Ray forwards them).
        callbacks: extra Ray Train ``UserCallback``s.  Inside a Ray Tune trial a
            ``TuneReportCallback`` is added, so every epoch's metrics reach Tune.

    Returns:
        the run's summary (``summary.json``, see ``pretrain``), plus ``ray_checkpoint``:
        the path of the last checkpoint Ray registered.

    Raises:
        MedaugError: bad settings (checked here, before any worker starts) or a user error
            raised inside a worker.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from medaug.engine.data import prepare_data
    from medaug.engine.pretrain import SUMMARY_FILE, check_pretrain, clear_run

    check_pretrain(cfg)
    p = cfg.pretrain
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = out_dir / RAY_DIR
    if not resume:
        clear_run(out_dir)
        shutil.rmtree(storage / RUN_NAME, ignore_errors=True)
    # Build the image cache (and check the data) once, here, so that the workers only open
    # it instead of racing to write it.
    prepare_data(cfg, out_dir, progress=progress)

    local = p.num_workers == 0
    callbacks = list(callbacks or [])
    try:
        from ray.tune.integration.ray_train import TuneReportCallback

        if (not local and _in_tune_session()
                and not any(isinstance(c, TuneReportCallback) for c in callbacks)):
            callbacks.append(TuneReportCallback())
    except ImportError:  # Tune not installed: nothing to forward to
        pass

    started_ray = False
    if not local and not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=progress)
        started_ray = True
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "cfg": config_to_dict(cfg),
            "out_dir": str(out_dir),
            "progress": progress,
            "fault": _fault_from_env(),
            "local": local,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=p.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=p.keep_checkpoints),
            callbacks=callbacks or None,
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        user = worker_error(err)
        if user is not None:
            raise user from None
        raise
    finally:
        if started_ray:
            ray.shutdown()

    import json

    summary_path = out_dir / SUMMARY_FILE
    if not summary_path.exists():
        raise RuntimeError(f"pretraining finished without writing {summary_path}")
    summary = json.loads(summary_path.read_text())
    summary["ray_checkpoint"] = (
        result.checkpoint.path if result.checkpoint and not local else None
    )
    return summary
