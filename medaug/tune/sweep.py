"""The sweep driver: a Ray Tune run of trials (pretrain on Ray Train, evaluate), tracked in MLflow.

:func:`run_sweep` lays out the output folder, checks everything it can before any trial
starts (every trial's config, the data, the tracking store), builds the shared inputs once
(the image cache; the label splits are drawn by the first evaluation and reused by all),
then runs Ray Tune:

* grid sweeps: Tune's ``grid_search`` over the pre-expanded trial keys; continuous spaces:
  ``OptunaSearch`` (``num_samples`` draws); optional ASHA early stopping on the per-epoch
  kNN AUC that pretraining forwards to Tune;
* one trial process per trial (``tune.with_resources``: ``tune.resources``), which launches
  its own Ray Train pretraining workers (``pretrain.num_workers``, ``use_gpu``), or with
  ``pretrain.num_workers: 0`` pretrains itself through Ray Train's local mode, then
  evaluates; ``max_concurrent`` bounds the trials in flight; a finished trial's process
  takes the next trial (Tune's actor reuse);
* Tune's experiment state under ``OUTPUT/tune/<name>``; ``resume=True`` restores it
  (``Tuner.restore``: unfinished trials continue, errored ones restart) and each trial
  resumes from its own folder (see :mod:`medaug.tune.trial`).

The output folder::

    OUTPUT/sweep.json      name, sweep id, tracking URI, trial keys (the resume anchor)
    OUTPUT/sweep.yaml      the sweep as run (after --set)
    OUTPUT/mlflow.db       the MLflow store (default tracking URI), OUTPUT/mlartifacts/
    OUTPUT/cache/          the image cache shared by the trials;  OUTPUT/splits.csv
    OUTPUT/inputs.json     written once the shared inputs are ready (the trials wait for it)
    OUTPUT/trials/<key>/   one folder per trial
    OUTPUT/tune/<name>/    Ray Tune's experiment state
    OUTPUT/report/         results.md, results.csv, results.png
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from medaug.errors import MedaugError
from medaug.tune.report import STATE_FILE, ResultTable, write_report
from medaug.tune.space import (
    SweepConfig,
    load_sweep,
    sample_points,
    smoke_sweep,
    trial_for_config,
)
from medaug.tune.tracking import (
    Tracker,
    default_artifact_location,
    default_tracking_uri,
    mlflow_ui_command,
    quiet_mlflow,
)
from medaug.tune.trial import (
    DONE_FILE,
    INPUTS_FILE,
    SweepContext,
    run_trial,
    trial_dir,
    write_inputs_state,
)

SWEEP_FILE = "sweep.yaml"
TUNE_DIR = "tune"
SMOKE_DATA = "smoke_data"
# The smoke phantom: enough patients for pool, selection and test partitions with both
# classes, small enough to draw in seconds.
SMOKE_PHANTOM = {"n_patients": 40, "image_size": 32, "seed": 0}
TRIAL_MEMORY = 256 * 2**20  # bytes a trial reserves when it asks for no CPU or GPU
AGENT_TIMEOUT_MS = 120_000  # how long a local raylet waits for its agents to start


def run_sweep(
    sweep_cfg: SweepConfig | str | Path | None,
    output: str | Path,
    resume: bool = False,
    smoke: bool = False,
    tracking_uri: str | None = None,
    *,
    overrides: list[str] | None = None,
    progress: bool = True,
    ray_address: str | None = None,
    num_cpus: int | None = None,
) -> ResultTable:
    """Run (or resume) a sweep and return its results table.

    Args:
        sweep_cfg: a loaded sweep, a sweep file path / shipped name, or None with
            ``resume=True`` (the sweep stored in ``output`` is used).
        output: the sweep's folder (created; must not hold another sweep unless resuming).
        resume: continue the sweep stored in ``output`` after a crash or a kill: finished
            trials are kept, interrupted ones resume from their checkpoints, errored ones
            are retried.
        smoke: shrink every trial to seconds on a tiny phantom (every stage still runs).
        tracking_uri: MLflow tracking URI (default ``sqlite:///OUTPUT/mlflow.db``).
        overrides: ``--set`` strings, when ``sweep_cfg`` is a path or name.
        progress: progress bars and per-trial logs.
        ray_address: connect to this Ray cluster (``"auto"``); default: the running one, or
            a local one started here (and shut down at the end).
        num_cpus: CPUs of a local Ray started here (default: all).

    Returns:
        the :class:`ResultTable` (also written to ``OUTPUT/report/``).

    Raises:
        MedaugError: bad sweep, data or output folder, all before any trial runs.
    """
    output = Path(output).resolve()
    state_path = output / STATE_FILE
    state: dict[str, Any] | None = None
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            state = None
    if state is not None and not resume:
        raise MedaugError(
            f"{output} already holds the sweep {state.get('experiment')!r}; "
            "pass --resume to continue it or choose another --output"
        )
    if resume and state is None:
        raise MedaugError(f"nothing to resume: {output} holds no sweep ({STATE_FILE} is missing)")

    sweep = _load(sweep_cfg, output, state, smoke, overrides)
    smoke = bool(state.get("smoke")) if state is not None else smoke
    # The planned trials (Optuna draws the others as it goes: only the baselines are known).
    trials = (
        sweep.grid_trials()
        if not sweep.space.continuous
        else [sweep.baseline_trial(b) for b in sweep.baselines]
    )
    if state is not None and not sweep.space.continuous:
        stored = state.get("trials") or []
        if [t.key for t in trials] != stored:
            raise MedaugError(
                f"the sweep given does not match the one in {output} "
                f"({len(trials)} vs {len(stored)} trials); resume without --config, or "
                "start a new --output"
            )

    output.mkdir(parents=True, exist_ok=True)
    sweep = sweep_inputs(sweep, output, smoke, progress, generate=False)
    first = sweep.resolve(trials[0].params if trials else {}, output=str(output))
    if not smoke:  # the smoke phantom is drawn below, while Ray starts
        _check_data(first)

    quiet_mlflow()
    uri = tracking_uri or (state or {}).get("tracking_uri") or default_tracking_uri(output)
    artifacts = default_artifact_location(output) if uri.startswith("sqlite:") else None
    sweep_id = (state or {}).get("sweep_id") or uuid.uuid4().hex
    tracker = Tracker(uri, sweep.name, sweep_id, artifacts)

    new_state = {
        "experiment": sweep.name,
        "sweep_id": sweep_id,
        "tracking_uri": uri,
        "artifact_location": artifacts,
        "target": first.data.target,
        "smoke": smoke,
        "overrides": list(overrides or (state or {}).get("overrides") or []),
        "trials": [t.key for t in trials],
        "created": (state or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if state is None:
        _write_text(output / SWEEP_FILE, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    _write_text(state_path, json.dumps(new_state, indent=2) + "\n")

    inputs = start_shared_inputs(tracker, first, output, smoke, progress)

    ctx = SweepContext(
        sweep=sweep,
        output=str(output),
        tracking_uri=uri,
        sweep_id=sweep_id,
        artifact_location=artifacts,
        order={t.key: i for i, t in enumerate(trials)},
        progress=progress,
        wait_inputs=True,
    )
    (output / INPUTS_FILE).unlink(missing_ok=True)
    # The driver needs MLflow and the report's libraries only when trials end: they load
    # once the trials are under way (a Tune callback), not while the trial processes start.
    warm_driver = _Once(lambda: _Background(lambda: (_report_imports(), tracker.client)))
    # The report is written while a local Ray shuts down (which takes a second or two).
    report: list[_Background] = []
    if trials and not sweep.space.continuous and all(
        (trial_dir(output, t.key) / DONE_FILE).exists() for t in trials
    ):
        inputs()  # every trial is complete: nothing for Ray to do
        errored = []
        table, paths = write_report(output, uri)
    else:
        with _fork_not_vfork():
            grids = _run_tune(
                sweep, ctx, output, resume, ray_address, num_cpus, progress,
                _Background(inputs), warm_driver,
                lambda: report.append(_Background(lambda: write_report(output, uri))),
            )
            errored = [r for grid in grids for r in grid if getattr(r, "error", None) is not None]
            table, paths = report[0].result() if report else write_report(output, uri)
    print(table.to_markdown())
    print(f"\nreport: {paths['markdown']}\n        {paths['csv']}\n        {paths['plot']}")
    print(f"MLflow: {mlflow_ui_command(uri)}")
    if errored:
        print(
            f"{len(errored)} trial(s) errored; see {output}/trials/<key>/error.txt, then "
            f"rerun with --resume to retry them",
            file=sys.stderr,
        )
    return table


def _load(
    sweep_cfg: SweepConfig | str | Path | None,
    output: Path,
    state: dict[str, Any] | None,
    smoke: bool,
    overrides: list[str] | None,
) -> SweepConfig:
    """The sweep to run: the one given, or (resuming) the one stored in ``output``."""
    if state is not None:
        smoke = bool(state.get("smoke"))
    if sweep_cfg is None:
        if state is None:
            raise MedaugError("give a sweep config (--config) or --resume an existing output")
        stored = output / SWEEP_FILE
        raw = yaml.safe_load(stored.read_text()) if stored.exists() else None
        if not isinstance(raw, dict):
            raise MedaugError(f"{stored} is missing or damaged; pass --config again to resume")
        # Reapplying the stored --set strings changes nothing in the stored sweep, but tells
        # a smoke run which settings the user chose over the smoke ones.
        return load_sweep(raw, state.get("overrides") or overrides, output=output, smoke=smoke)
    if isinstance(sweep_cfg, SweepConfig):
        if overrides:
            raise MedaugError("overrides apply to sweep files; pass the path instead")
        return smoke_sweep(sweep_cfg) if smoke and not sweep_cfg.forced else sweep_cfg
    return load_sweep(sweep_cfg, overrides, output=output, smoke=smoke)


def sweep_inputs(
    sweep: SweepConfig, output: Path, smoke: bool, progress: bool = True, generate: bool = True
) -> SweepConfig:
    """The sweep with its shared inputs in ``output``: the smoke phantom (``smoke``; drawn
    now if ``generate``, else see :func:`make_smoke_data`), the image cache folder and the
    label-splits file every trial uses."""
    if smoke:
        if generate:
            make_smoke_data(output, progress)
        sweep = _smoke_data(sweep, output)
    return _shared_paths(sweep, output)


def start_shared_inputs(
    tracker: Tracker, cfg: Any, output: Path, smoke: bool, progress: bool = True
) -> Callable[[], None]:
    """Start the child processes the sweep's shared inputs need and return the function that
    prepares them, meant to run in a background thread while Ray and the first trial
    processes start (the trials wait for ``OUTPUT/inputs.json``, which it writes, with the
    error if any): the smoke phantom; the image cache, built once so that concurrent trials
    only open it; the MLflow store and experiment, which must exist before any trial races
    to create them (made in a child process: a new SQLite store takes seconds of
    migrations).

    Every process is started here, in the calling thread, not in the background one: Ray's
    start sets environment variables, and a child started meanwhile from another thread can
    fail with EFAULT (``vfork`` + ``execv`` read the environment array while it is
    reallocated).
    """
    from medaug.data.workers import start_pool_server

    experiment = tracker.start_experiment_process()
    workers = cfg.data.num_loader_workers
    if workers is None or workers > 1:  # the image cache's decoding pool forks from it
        start_pool_server()

    def prepare() -> None:
        from medaug.engine.data import prepare_data

        try:
            if smoke:
                make_smoke_data(output, progress)
            prepare_data(cfg, output, progress=progress)
            experiment()
        except BaseException as err:
            write_inputs_state(output, err)
            raise
        write_inputs_state(output)

    return prepare


def make_smoke_data(output: Path, progress: bool = True) -> None:
    """Draw the smoke phantom in ``OUTPUT/smoke_data`` (kept if already there)."""
    from medaug.data.phantom import make_phantom

    make_phantom(output / SMOKE_DATA, workers=1, progress=progress, **SMOKE_PHANTOM)


def _smoke_data(sweep: SweepConfig, output: Path) -> SweepConfig:
    """Point a smoke sweep at the tiny phantom of ``OUTPUT/smoke_data``."""
    folder = output / SMOKE_DATA
    out = copy.deepcopy(sweep)
    out.forced = copy.deepcopy(out.forced)
    out.forced.setdefault("data", {}).update(
        {"dataset": "chexpert", "csv": str(folder / "train.csv"), "root": None, "column_map": {},
         "image_size": SMOKE_PHANTOM["image_size"]}
    )
    return out


def _shared_paths(sweep: SweepConfig, output: Path) -> SweepConfig:
    """Trials share the image cache and the label splits unless the sweep names its own."""
    out = copy.deepcopy(sweep)
    data = out.base.setdefault("data", {})
    if not data.get("cache_dir") and not (out.forced.get("data") or {}).get("cache_dir"):
        data["cache_dir"] = str(output / "cache")
    ev = out.base.setdefault("eval", {})
    if not ev.get("splits_csv"):
        ev["splits_csv"] = str(output / "splits.csv")
    return out


def _check_data(cfg: Any) -> None:
    if not cfg.data.csv:
        raise MedaugError(
            "data.csv is not set: pass --set data.csv=/path/to/train.csv (or --smoke for a "
            "run on a tiny phantom)"
        )
    if not Path(cfg.data.csv).exists():
        raise MedaugError(f"data.csv {cfg.data.csv} does not exist")


def _run_tune(
    sweep: SweepConfig,
    ctx: SweepContext,
    output: Path,
    resume: bool,
    ray_address: str | None,
    num_cpus: int | None,
    progress: bool,
    inputs: _Background | None = None,
    warm: Any = None,
    finished: Any = None,
) -> list[Any]:
    """Start (or join) Ray, run or restore the Tune experiments, make sure ``inputs`` (the
    shared inputs, prepared in the background while the trials start) succeeded, call
    ``finished()`` and stop a Ray started here.

    One experiment, named after the sweep; an Optuna sweep with baselines runs them first as
    a small grid experiment of their own (``<name>-baselines``), since Optuna only draws
    points of the space.
    """
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from medaug.tune.space import tune_param_space

    # Per-epoch results (forwarded from Ray Train) carry the kNN AUC but not the final
    # linear-probe AUC the searcher ranks by, which arrives with the trial's last result.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's results go to CSV and JSON files (the callbacks below); its default TensorBoard
    # logger is left out: MLflow holds the curves, and tensorboardX would import torch here.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    experiments = []
    if sweep.space.continuous and sweep.baselines:
        keys = [sweep.baseline_trial(b).key for b in sweep.baselines]
        experiments.append(
            (f"{sweep.name}-baselines", {"trial": tune.grid_search(keys)}, _tune_config(sweep, grid=True))
        )
    experiments.append((sweep.name, tune_param_space(sweep), _tune_config(sweep)))

    started = False
    if not ray.is_initialized():
        _init_ray(ray_address, num_cpus, progress)
        started = True
    try:
        t = sweep.tune
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(sweep))
        storage = str(output / TUNE_DIR)
        grids = []
        for name, param_space, tune_config in experiments:
            path = os.path.join(storage, name)
            if resume and tune.Tuner.can_restore(path):
                tuner = tune.Tuner.restore(
                    path, trainable, resume_unfinished=True, resume_errored=False,
                    restart_errored=True,
                )
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=param_space,
                    tune_config=tune_config,
                    run_config=tune.RunConfig(
                        name=name,
                        storage_path=storage,
                        failure_config=tune.FailureConfig(max_failures=t.max_failures),
                        callbacks=[
                            CSVLoggerCallback(), JsonLoggerCallback(), _run_status_callback(ctx, warm),
                        ],
                        verbose=1 if progress else 0,
                    ),
                )
            grids.append(tuner.fit())
        if inputs is not None:
            inputs.result()  # the inputs' own error, rather than the trials' report of it
        if finished is not None:
            finished()
        return grids
    finally:
        if started:
            ray.shutdown()


def _report_imports() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    from scipy import stats  # noqa: F401


def _init_ray(address: str | None, num_cpus: int | None, progress: bool) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray for this sweep.

    On a busy machine a local Ray's node agents can start slower than the raylet waits for
    them: the wait is lengthened, and a start that fails anyway is tried once more.
    """
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": progress}
    if address:
        ray.init(address=address, **kwargs)
        return
    os.environ.setdefault("RAY_agent_register_timeout_ms", str(AGENT_TIMEOUT_MS))

    kwargs["num_cpus"] = num_cpus or os.cpu_count()
    for attempt in range(2):
        try:
            ray.init(**kwargs)
            return
        except Exception as err:  # Ray raises a bare Exception when its node fails to start
            ray.shutdown()
            if attempt == 1:
                raise
            print(f"medaug sweep: starting Ray failed ({str(err).splitlines()[0]}); retrying",
                  file=sys.stderr)


def _run_status_callback(ctx: SweepContext, warm: Any = None) -> Any:
    """A Tune callback giving the MLflow run of a trial that did not finish its final status.

    A trial process marks its run FINISHED itself.  Only Tune knows why any other trial
    ended: an error (the run becomes FAILED; the trial process died, or raised and tagged
    the error) or early stopping by the scheduler, which interrupts the trial from outside
    (KILLED).  ``warm`` (if given) is called on every trial result: the driver's own imports
    wait for the trials to be under way.
    """
    from ray.tune import Callback

    class CloseUnfinishedRuns(Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if warm is not None:
                warm()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._close(trial, "KILLED")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._close(trial, "FAILED")

        def _close(self, trial: Any, status: str) -> None:
            try:
                tracker = ctx.tracker()
                run = tracker.find_run(trial_for_config(ctx.sweep, trial.config).key)
                if run is not None and run.info.status != "FINISHED":
                    tracker.set_tags(run.info.run_id, {"ended_by": f"tune ({trial.status})"})
                    tracker.end_trial(run.info.run_id, status)
            except Exception as err:  # bookkeeping must never stop the sweep
                print(f"medaug sweep: warning: could not close the MLflow run of {trial}: {err}",
                      file=sys.stderr)

    return CloseUnfinishedRuns()


def _optuna_search(metric: str, mode: str, seed: int) -> Any:
    """Optuna ranking trials by their final metric.

    The per-epoch pretraining results that reach Tune lack the final metric (it comes with
    the trial's last result), so they are not passed on to Optuna as intermediate values;
    a trial stopped early never reports it and counts as pruned.
    """
    from ray.tune.search.optuna import OptunaSearch

    class FinalMetricOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return FinalMetricOptunaSearch(metric=metric, mode=mode, seed=seed)


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """The trial process's resource request: ``tune.resources``, raised to what the trials
    that pretrain in their own process (``pretrain.num_workers: 0``, Ray Train's local mode)
    train with (``pretrain.cpus_per_worker``, one GPU with ``pretrain.use_gpu``).

    A trial asking for neither CPU nor GPU (it mostly waits on its pretraining workers)
    still needs a non-empty request: it reserves a little memory instead.
    """
    t = sweep.tune
    cpu, gpu = t.cpu, t.gpu
    for params in sample_points(sweep):
        p = sweep.resolve(params).pretrain
        if p.num_workers == 0:
            cpu = max(cpu, p.cpus_per_worker)
            gpu = max(gpu, 1 if p.use_gpu else 0)
    out = {"cpu": cpu, "gpu": gpu}
    if not cpu and not gpu:
        out["memory"] = TRIAL_MEMORY
    return out


def _tune_config(sweep: SweepConfig, grid: bool = False) -> Any:
    """The TuneConfig of the sweep (``grid``: of its baselines' grid experiment)."""
    from ray import tune

    t = sweep.tune
    search_alg = None
    if sweep.space.continuous and not grid:
        search_alg = _optuna_search(t.metric, t.mode, t.search_seed)
    scheduler = None
    if t.asha is not None and not grid:
        from ray.tune.schedulers import ASHAScheduler

        epochs = max(sweep.resolve(p).pretrain.epochs for p in sample_points(sweep))
        # Rungs are counted in completed epochs (robust to a resumed trial restarting
        # Tune's iteration counter); max_t lies past the last epoch, so the final epoch's
        # report never stops a trial before its evaluation.
        scheduler = ASHAScheduler(
            metric=t.asha.metric, mode="max", time_attr="epoch", max_t=epochs + 1,
            grace_period=t.asha.grace_period, reduction_factor=t.asha.reduction_factor,
        )

    def name(trial: Any) -> str:
        return trial_for_config(sweep, trial.config).key

    return tune.TuneConfig(
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=t.num_samples if sweep.space.continuous and not grid else 1,
        max_concurrent_trials=t.max_concurrent or None,
        # A finished trial's process (Python, torch and medaug already imported) takes the
        # next trial: every trial asks for the same resources.  Not with early stopping: a
        # stopped trial's process must go, or its pretraining would run on in the background.
        reuse_actors=t.asha is None,
        trial_name_creator=name,
        trial_dirname_creator=name,
    )


class _Once:
    """Call ``fn`` on the first call only."""

    def __init__(self, fn: Any) -> None:
        self._fn: Any = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


@contextlib.contextmanager
def _fork_not_vfork() -> Iterator[None]:
    """Child processes started meanwhile by this process's threads use ``fork``, not
    ``vfork``: while Ray runs, its main thread may set environment variables, and a child
    of ``vfork`` reads the environment array through ``execv`` while it is reallocated
    (EFAULT).  The processes started by the sweep's own threads are started before Ray; this
    covers the libraries' (matplotlib asks ``fc-list`` for fonts on its first use)."""
    import subprocess

    before = getattr(subprocess, "_USE_VFORK", None)
    if before is None:  # a Python without the switch
        yield
        return
    subprocess._USE_VFORK = False
    try:
        yield
    finally:
        subprocess._USE_VFORK = before


class _Background:
    """Run ``fn`` in a thread; :meth:`result` waits and re-raises its error here."""

    def __init__(self, fn: Any) -> None:
        import threading

        self._value: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._value = fn()
            except BaseException as err:  # handed to the caller by result()
                self._error = err

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
