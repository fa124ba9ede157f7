"""The sweep driver: a Ray Tune run of trials (pretrain on Ray Train, evaluate), tracked in MLflow.

:func:`run_sweep` runs in this order, plainly:

1. checks everything it can before anything is written (every trial's config, the data, the
   output folder), then takes the output's driver lock (one driver per output);
2. prepares the shared inputs: the smoke phantom (``--smoke``), the image cache (built once,
   so that concurrent trials only open it), the MLflow store, the experiment and the sweep's
   parent run, which the trial runs nest under; the label splits are drawn by the first
   evaluation and reused by all;
3. starts (or joins) Ray and runs Ray Tune:

   * grid sweeps: Tune's ``grid_search`` over the pre-expanded trial keys; continuous
     spaces: ``OptunaSearch`` (``num_samples`` draws); optional ASHA early stopping on the
     per-epoch kNN AUC that pretraining forwards to Tune;
   * one trial process per trial (``tune.with_resources``: ``tune.resources``), which
     launches its own Ray Train pretraining workers (``pretrain.num_workers``, ``use_gpu``),
     or with ``pretrain.num_workers: 0`` pretrains itself through Ray Train's local mode,
     then evaluates; ``max_concurrent`` bounds the trials in flight; a finished trial's
     process takes the next trial (Tune's actor reuse);
   * Tune's experiment state under ``OUTPUT/tune/<name>``; ``resume=True`` restores it
     (``Tuner.restore``: unfinished trials continue, errored ones restart) and each trial
     resumes from its own folder (see :mod:`medaug.tune.trial`);

4. writes the report, puts it into MLflow (the parent run's artifacts, the experiment's
   description) and prints where to look.

The output folder::

    OUTPUT/driver.lock     held by the running driver (its pid and host)
    OUTPUT/sweep.json      name, sweep id, tracking URI, trial keys (the resume anchor)
    OUTPUT/sweep.yaml      the sweep as run (after --set)
    OUTPUT/mlflow.db       the MLflow store (default tracking URI), OUTPUT/mlartifacts/
    OUTPUT/cache/          the image cache shared by the trials;  OUTPUT/splits.csv
    OUTPUT/trials/<key>/   one folder per trial
    OUTPUT/tune/<name>/    Ray Tune's experiment state
    OUTPUT/report/         results.md, results.csv, results.png
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from medaug.errors import MedaugError
from medaug.files import write_text_atomic
from medaug.tune.report import STATE_FILE, ResultTable, read_state, write_report
from medaug.tune.space import (
    SweepConfig,
    load_sweep,
    sample_points,
    smoke_sweep,
    trial_for_config,
)
from medaug.tune.tracking import (
    BEST_TAG,
    NOTE_TAG,
    Tracker,
    best_trial,
    default_artifact_location,
    default_tracking_uri,
    experiment_url,
    mlflow_ui_command,
    quiet_mlflow,
    tracker_from_state,
    view_state,
)
from medaug.tune.trial import DONE_FILE, SweepContext, run_trial, trial_dir

SWEEP_FILE = "sweep.yaml"
LOCK_FILE = "driver.lock"
TUNE_DIR = "tune"
REPORT_ARTIFACTS = "report"  # the parent run's folder of report files
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
        ray_address: the Ray cluster to join (``"auto"``: the running one, else a local Ray
            started here); default: the Ray this process already joined, else a local one.
        num_cpus: CPUs of a local Ray started here (default: all).

    Returns:
        the :class:`ResultTable` (also written to ``OUTPUT/report/``).

    Raises:
        MedaugError: bad sweep, data or output folder, or another driver running on
            ``output``, all before any trial runs.
    """
    output = Path(output).resolve()
    state: dict[str, Any] | None = None
    if (output / STATE_FILE).exists():
        try:
            state = json.loads((output / STATE_FILE).read_text())
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
    sweep = sweep_inputs(sweep, output, smoke, progress, generate=False)
    first = sweep.resolve(trials[0].params if trials else {}, output=str(output))
    if not smoke:  # the smoke phantom is drawn below
        _check_data(first)

    output.mkdir(parents=True, exist_ok=True)
    with driver_lock(output):
        quiet_mlflow()
        uri = tracking_uri or (state or {}).get("tracking_uri") or default_tracking_uri(output)
        artifacts = default_artifact_location(output) if uri.startswith("sqlite:") else None
        sweep_id = (state or {}).get("sweep_id") or uuid.uuid4().hex
        new_state = {
            "experiment": sweep.name,
            "sweep_id": sweep_id,
            "tracking_uri": uri,
            "artifact_location": artifacts,
            "target": first.data.target,
            "metric": sweep.tune.metric,
            "mode": sweep.tune.mode,
            "smoke": smoke,
            "overrides": list(overrides or (state or {}).get("overrides") or []),
            "trials": [t.key for t in trials],
            "created": (state or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if state is None:
            write_text_atomic(output / SWEEP_FILE, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        write_text_atomic(output / STATE_FILE, json.dumps(new_state, indent=2) + "\n")

        if smoke:
            make_smoke_data(output, progress)
        _prepare_cache(first, output, progress)
        tracker = Tracker(uri, sweep.name, sweep_id, artifacts)
        parent = start_sweep_run(tracker, sweep, output, new_state)

        ctx = SweepContext(
            sweep=sweep,
            output=str(output),
            tracking_uri=uri,
            sweep_id=sweep_id,
            artifact_location=artifacts,
            parent_run_id=parent,
            order={t.key: i for i, t in enumerate(trials)},
            progress=progress,
        )
        complete = bool(trials) and not sweep.space.continuous and all(
            (trial_dir(output, t.key) / DONE_FILE).exists() for t in trials
        )
        errored: list[Any] = []
        if not complete:  # a complete sweep needs no Ray: its report is only rebuilt
            grids = _run_tune(sweep, ctx, output, resume, ray_address, num_cpus, progress)
            errored = [r for grid in grids for r in grid if getattr(r, "error", None) is not None]
        table, paths = publish_report(output, uri)
        tracker.end_trial(parent, "FAILED" if errored else "FINISHED")
    print(table.to_markdown())
    print(f"\nreport: {paths['markdown']}\n        {paths['csv']}\n        {paths['plot']}")
    print(ui_hint(uri, tracker.experiment_id))
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


# ---------------------------------------------------------------------------------------------
# One driver per output


@contextlib.contextmanager
def driver_lock(output: Path) -> Iterator[None]:
    """Hold ``OUTPUT/driver.lock`` while the driver runs: a second driver on the same output
    (a second ``--resume``, a second ``medaug demo``) is refused, naming the running one.

    The lock is ``flock(2)`` on the file, which the kernel releases when its holder exits,
    however it exits: a driver killed with ``kill -9`` leaves a free lock, which the next
    driver takes over (the file still names the dead driver: it is reported).  The file holds
    the holder's pid and host.  A sweep's driver runs on one machine (on a cluster, the head
    node), so every contender locks through the same kernel, also when the output sits on
    a shared file system (where Linux's NFS client maps flock onto the server's locks).
    The descriptor is not inherited by the processes the driver starts (Python opens it
    close-on-exec), so the lock ends with the driver itself.

    Raises:
        MedaugError: another driver holds the lock.
    """
    path = output / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd) or "another process"
            raise MedaugError(
                f"{output} is in use by the sweep driver {holder}; wait for it to finish, "
                "or stop it and --resume"
            ) from None
        previous = _lock_holder(fd)
        if previous:
            print(f"medaug sweep: the driver {previous} stopped without releasing {output}; "
                  "taking it over", file=sys.stderr)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (since {started})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean exit: nothing to take over
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()


# ---------------------------------------------------------------------------------------------
# Shared inputs


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


def make_smoke_data(output: Path, progress: bool = True) -> None:
    """Draw the smoke phantom in ``OUTPUT/smoke_data`` (kept if already there)."""
    from medaug.data.phantom import make_phantom

    make_phantom(output / SMOKE_DATA, workers=1, progress=progress, **SMOKE_PHANTOM)


def _prepare_cache(cfg: Any, output: Path, progress: bool) -> None:
    """Build the image cache the trials share (once: later trials only open it), so that an
    error in the data (an unreadable image) is the sweep's, reported before Ray starts."""
    from medaug.engine.data import prepare_data

    prepare_data(cfg, output, progress=progress)


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


# ---------------------------------------------------------------------------------------------
# MLflow: the experiment, the parent run, the report


def start_sweep_run(
    tracker: Tracker, sweep: SweepConfig, output: Path, state: dict[str, Any]
) -> str:
    """Set up the sweep's experiment and return the id of its parent run (the one already
    there when resuming).

    The experiment is marked as model training and opens on the runs table in the sweep's
    saved view (:func:`medaug.tune.tracking.view_state`); its description says the sweep is
    running until the report replaces it.  The parent run holds the sweep's name, space and
    config (``sweep.yaml``); trials nest under it.
    """
    stages = ["linear"]
    if any(sweep.resolve(p).eval.e2e for p in sample_points(sweep)):
        stages.append("e2e")
    space = sweep.space
    # Optuna draws its trials as it goes: only the baselines are planned.
    planned = len(state["trials"]) + (sweep.tune.num_samples if space.continuous else 0)
    exp = tracker.client.get_experiment(tracker.experiment_id)
    description = exp.tags.get(NOTE_TAG) or (
        f"Sweep **{sweep.name}** is running: {planned} trials. The results table appears "
        f"here when it ends ({output / 'report'})."
    )
    tracker.setup_experiment(view_state(stages, sweep.tune.metric), description)
    run_id = tracker.start_sweep(sweep.name)
    params: dict[str, Any] = {
        "sweep": sweep.name,
        "sweep_id": tracker.sweep_id,
        "description": sweep.description,
        "output": str(output),
        "smoke": state["smoke"],
        "metric": f"{sweep.tune.metric} ({sweep.tune.mode})",
        "trials": planned,
        "baselines": sweep.baselines,
    }
    params.update({f"space.{k}": v for k, v in space.grid.items()})
    params.update({f"space.{k}": f"{r.kind}[{r.low:g}, {r.high:g}]" for k, r in space.ranges.items()})
    if space.variants:
        params["space.variants"] = [v.name for v in space.variants]
    tracker.log_params(run_id, params)
    tracker.log_artifact(run_id, output / SWEEP_FILE)
    return run_id


def publish_report(
    output: str | Path, tracking_uri: str | None = None, baseline: str | None = None
) -> tuple[ResultTable, dict[str, Path]]:
    """Build the sweep's report (:func:`medaug.tune.report.write_report`) and put it into
    MLflow: the files as the parent run's ``report/`` artifacts (replacing older ones), the
    table as the experiment's description, and on the parent run the best trial by the tune
    metric: its key (tag ``best_trial``), that metric (``best_<metric>``) and its reported
    AUC (``best_linear_auc_mean``)."""
    output = Path(output)
    table, paths = write_report(output, tracking_uri, baseline)
    state = read_state(output)
    tracker = tracker_from_state(state, tracking_uri)
    parent = tracker.find_sweep_run()
    if parent is None:  # a sweep run before parent runs existed
        return table, paths
    run_id = parent.info.run_id
    for path in paths.values():
        tracker.log_artifact(run_id, path, REPORT_ARTIFACTS)
    metric = state.get("metric") or "linear_select_auc_mean"
    best = best_trial(tracker.runs(), metric, state.get("mode") or "max")
    if best is not None:
        tracker.set_tags(run_id, {BEST_TAG: best.data.tags.get("trial_key", best.info.run_name)})
        tracker.log_metrics(run_id, {f"best_{m}": best.data.metrics.get(m)
                                     for m in dict.fromkeys([metric, "linear_auc_mean"])})
    tracker.set_experiment_tags({NOTE_TAG: _description(table, parent.info.run_name)})
    return table, paths


def _description(table: ResultTable, parent_name: str) -> str:
    return (
        f"{table.to_markdown()}\n\nThe report's files (`results.md`, `results.csv`, "
        f"`results.png`) are the artifacts of the run `{parent_name}`, under "
        f"`{REPORT_ARTIFACTS}/`."
    )


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """What to run and open to compare the trials in the MLflow UI."""
    url = experiment_url(tracking_uri, experiment_id)
    command = mlflow_ui_command(tracking_uri)
    if command is None:
        return f"MLflow: {url}"
    return f"MLflow: {_mlflow_program()}{command[len('mlflow'):]}\n        then open {url}"


def _mlflow_program() -> str:
    """The ``mlflow`` program of this environment, as the user can type it."""
    program = Path(sys.executable).with_name("mlflow")
    if not program.exists():
        return "mlflow"
    try:
        return str(program.relative_to(Path.cwd()))
    except ValueError:
        return str(program)


# ---------------------------------------------------------------------------------------------
# Ray Tune


def _run_tune(
    sweep: SweepConfig,
    ctx: SweepContext,
    output: Path,
    resume: bool,
    ray_address: str | None,
    num_cpus: int | None,
    progress: bool,
) -> list[Any]:
    """Start (or join) Ray, run or restore the Tune experiments, and stop a Ray started here.

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
    # logger is left out: MLflow holds the curves.
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
        started = _init_ray(ray_address, num_cpus, progress)
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
                        callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), _run_status_callback(ctx)],
                        verbose=1 if progress else 0,
                    ),
                )
            grids.append(tuner.fit())
        return grids
    finally:
        if started:
            ray.shutdown()


def _init_ray(address: str | None, num_cpus: int | None, progress: bool) -> bool:
    """Join the Ray cluster at ``address``, or start a local Ray for this sweep (also for
    ``"auto"`` when no cluster runs).  Returns True when a local Ray was started.

    On a busy machine a local Ray's node agents can start slower than the raylet waits for
    them: the wait is lengthened, and a start that fails anyway is tried once more.
    """
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": progress}
    if address:
        try:
            ray.init(address=address, **kwargs)
            return False
        except ConnectionError:
            if address != "auto":
                raise
            print("medaug sweep: no running Ray cluster found; starting a local Ray",
                  file=sys.stderr)
    os.environ.setdefault("RAY_agent_register_timeout_ms", str(AGENT_TIMEOUT_MS))

    kwargs["num_cpus"] = num_cpus or os.cpu_count()
    for attempt in range(2):
        try:
            ray.init(**kwargs)
            return True
        except Exception as err:  # Ray raises a bare Exception when its node fails to start
            ray.shutdown()
            if attempt == 1:
                raise
            print(f"medaug sweep: starting Ray failed ({str(err).splitlines()[0]}); retrying",
                  file=sys.stderr)
    raise AssertionError("unreachable")


def _run_status_callback(ctx: SweepContext) -> Any:
    """A Tune callback giving the MLflow run of a trial that did not finish its final status.

    A trial process marks its run FINISHED itself.  Only Tune knows why any other trial
    ended: an error (the run becomes FAILED; the trial process died, or raised and tagged
    the error) or early stopping by the scheduler, which interrupts the trial from outside
    (KILLED).
    """
    from ray.tune import Callback

    class CloseUnfinishedRuns(Callback):
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

