"""MLflow tracking of a sweep: one experiment per sweep, exactly one run per trial.

The default store is a SQLite database beside the results (``sqlite:///OUTPUT/mlflow.db``,
artifacts under ``OUTPUT/mlartifacts``); any tracking URI works (e.g. an ``mlflow server`` on
a cluster's head node).  Runs are named after the trial key and tagged with it and with the
sweep id, so a resumed trial finds its run by tag and keeps logging into it instead of
opening a second one.  Only the trial process (never a training worker) talks to MLflow.

Metric names (``<stage>`` is ``linear`` or ``e2e``; the target observation has bare names,
other observations are prefixed ``<observation>/``):

* per epoch of pretraining (step = epoch): ``loss``, ``knn_auc``, ``images_per_s``;
* ``knn_auc_best``;
* ``<stage>_auc_mean``, ``<stage>_auc_std``, and per split ``<stage>_auc_split<i>``,
  ``<stage>_ci_low_split<i>``, ``<stage>_ci_high_split<i>``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from medaug.errors import MedaugError

TRIAL_TAG = "trial_key"
SWEEP_TAG = "sweep_id"
LABEL_TAG = "trial_label"
KIND_TAG = "trial_kind"  # pretrain | baseline
CURVE_KEYS: tuple[str, ...] = ("loss", "knn_auc", "images_per_s")
STAGES: tuple[str, ...] = ("linear", "e2e")
# Top-level param names (besides the flattened config) that reports group by.
SUMMARY_PARAMS: dict[str, str] = {
    "criterion": "pretrain.criterion",
    "crop_scale": "pretrain.crop_scale",
    "negatives": "pretrain.negatives",
    "size_match": "pretrain.size_match",
    "distinct_only": "pretrain.distinct_only",
    "reweight_t": "pretrain.reweight_t",
}
_MAX_PARAM = 6000  # MLflow's limit on a param value
_T = TypeVar("_T")


def default_tracking_uri(output: str | Path) -> str:
    """``sqlite:///<abs output>/mlflow.db``: the sweep's own database store."""
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def default_artifact_location(output: str | Path) -> str:
    """``file://<abs output>/mlartifacts``."""
    return (Path(output).resolve() / "mlartifacts").as_uri()


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that shows a sweep in the MLflow UI."""
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def _retry(fn: Callable[[], _T], what: str, attempts: int = 6) -> _T:
    """Call ``fn``, retrying transient store errors (a locked SQLite file, a busy server)."""
    from mlflow.exceptions import MlflowException

    delay = 0.5
    for attempt in range(attempts):
        try:
            return fn()
        except MlflowException as err:
            transient = err.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR") or (
                "locked" in str(err)
            )
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class Tracker:
    """The MLflow experiment of one sweep.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///...``, ``http://head:5000``, ...).
        experiment: experiment name (the sweep name).
        sweep_id: tags every run, so two sweeps sharing an experiment name stay apart.
        artifact_location: where a newly created experiment stores artifacts (None: the
            store's default, e.g. the server's artifact root).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_id: str,
        artifact_location: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_id = sweep_id
        self.artifact_location = artifact_location
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
        """The ``MlflowClient``, made on first use (opening a new SQLite store migrates its
        schema, which takes seconds: a caller can do it in the background)."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- experiment and runs ----------------------------------------------------------------

    @property
    def experiment_id(self) -> str:
        """The experiment's id, creating the experiment on first use."""
        if self._experiment_id is None:
            self._experiment_id = _retry(self._get_or_create_experiment, "experiment")
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise MedaugError(
                    f"MLflow experiment {self.experiment!r} at {self.tracking_uri} is deleted; "
                    "restore it (mlflow experiments restore) or rename the sweep"
                )
            return exp.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment,
                artifact_location=self.artifact_location,
                tags={SWEEP_TAG: self.sweep_id},
            )
        except MlflowException:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def start_experiment_process(self) -> Callable[[], str]:
        """Create the store and the experiment in a child process; returns the function that
        waits for it and gives the experiment id.

        A new SQLite store's schema migrations are seconds of pure Python: run here, they
        would hold the interpreter lock that this process's other threads (Ray Tune's loop
        starting the trials) need.
        """
        import subprocess
        import sys

        args = [self.tracking_uri, self.experiment, self.sweep_id, self.artifact_location or ""]
        proc = subprocess.Popen(
            [sys.executable, "-m", "medaug.tune.tracking", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

        def wait() -> str:
            out, err = proc.communicate()
            if proc.returncode != 0:
                lines = err.strip().splitlines()
                raise MedaugError(
                    f"could not open the MLflow experiment {self.experiment!r} at "
                    f"{self.tracking_uri}: {lines[-1] if lines else f'exit code {proc.returncode}'}"
                )
            self._experiment_id = out.strip().splitlines()[-1]
            return self._experiment_id

        return wait

    def find_run(self, key: str) -> Any | None:
        """The run of trial ``key`` in this sweep, or None."""
        runs = _retry(
            lambda: self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.{TRIAL_TAG} = '{key}' and tags.{SWEEP_TAG} = '{self.sweep_id}'",
                max_results=10,
            ),
            "search",
        )
        if not runs:
            return None
        # Should there ever be two (a crash between create and tag), keep the oldest.
        return min(runs, key=lambda r: r.info.start_time or 0)

    def start_trial(self, key: str, label: str = "", kind: str = "pretrain") -> str:
        """The run id of trial ``key``: its existing run (set back to RUNNING) or a new one."""
        run = self.find_run(key)
        if run is not None:
            if run.info.status != "RUNNING":
                _retry(lambda: self.client.update_run(run.info.run_id, status="RUNNING"), "update")
            return run.info.run_id
        tags = {TRIAL_TAG: key, SWEEP_TAG: self.sweep_id, LABEL_TAG: label or key, KIND_TAG: kind}
        created = _retry(
            lambda: self.client.create_run(self.experiment_id, run_name=key, tags=tags), "create"
        )
        return created.info.run_id

    def end_trial(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        _retry(lambda: self.client.set_terminated(run_id, status=status), "terminate")

    # -- logging ------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params not yet on the run (MLflow forbids changing a logged value)."""
        from mlflow.entities import Param

        existing = _retry(lambda: self.client.get_run(run_id), "get").data.params
        todo = [
            Param(str(k), _param_value(v)) for k, v in params.items() if str(k) not in existing
        ]
        for i in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
            chunk = todo[i : i + 100]
            _retry(lambda chunk=chunk: self.client.log_batch(run_id, params=chunk), "params")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log finite metrics at ``step`` (NaN / None values are skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(step))
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            chunk = items[i : i + 1000]
            _retry(lambda chunk=chunk: self.client.log_batch(run_id, metrics=chunk), "metrics")

    def log_curves(self, run_id: str, rows: Iterable[dict[str, Any]], keys: Iterable[str] = CURVE_KEYS) -> int:
        """Log per-epoch rows (``{"epoch": e, "loss": ..., ...}``) whose epoch is not logged yet.

        Returns the number of epochs logged now; rerunning after a resume adds only the new ones.
        """
        keys = list(keys)
        done: set[int] = set()
        for key in keys:
            history = _retry(lambda key=key: self.client.get_metric_history(run_id, key), "history")
            done |= {int(m.step) for m in history}
        n = 0
        for row in rows:
            epoch = row.get("epoch")
            if epoch is None or int(epoch) in done:
                continue
            values = {k: row[k] for k in keys if row.get(k) is not None}
            if values:
                self.log_metrics(run_id, values, step=int(epoch))
                done.add(int(epoch))
                n += 1
        return n

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder's files) into the run's artifacts."""
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            _retry(
                lambda: self.client.log_artifacts(run_id, str(path), artifact_path), "artifacts"
            )
        else:
            _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path), "artifact")

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(run_id, tags=items), "tags")

    # -- reading --------------------------------------------------------------------------------

    def runs(self) -> list[Any]:
        """Every run of this sweep (all statuses), oldest first."""
        exp = _retry(lambda: self.client.get_experiment_by_name(self.experiment), "experiment")
        if exp is None:
            return []
        out: list[Any] = []
        token = None
        while True:
            page = _retry(
                lambda token=token: self.client.search_runs(
                    [exp.experiment_id],
                    filter_string=f"tags.{SWEEP_TAG} = '{self.sweep_id}'",
                    max_results=1000,
                    page_token=token,
                ),
                "search",
            )
            out.extend(page)
            token = page.token
            if not token:
                break
        return sorted(out, key=lambda r: r.info.start_time or 0)


def result_metrics(results: dict[str, Any], target: str) -> dict[str, float]:
    """The MLflow metrics of an evaluation ``results.json`` (see the module docstring).

    Args:
        results: ``{"linear": {obs: {"per_split": [{"split", "auc", "ci_low", "ci_high"}],
            "mean", "std"}}, "e2e": {...}}``.
        target: the observation whose metrics get the bare names.
    """
    out: dict[str, float] = {}
    for stage in STAGES:
        by_obs = results.get(stage) or {}
        if not isinstance(by_obs, dict):
            continue
        for obs, entry in by_obs.items():
            if not isinstance(entry, dict) or "mean" not in entry:
                continue
            prefix = "" if obs == target else f"{obs}/"
            out[f"{prefix}{stage}_auc_mean"] = entry.get("mean")
            out[f"{prefix}{stage}_auc_std"] = entry.get("std")
            for i, split in enumerate(entry.get("per_split") or []):
                index = str(split.get("split", i))
                tag = index if index.startswith("split") else f"split{index}"
                for name in ("auc", "ci_low", "ci_high"):
                    if split.get(name) is not None:
                        out[f"{prefix}{stage}_{name}_{tag}"] = split[name]
    return {k: v for k, v in out.items() if v is not None}


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."


def tracker_from_state(state: dict[str, Any], tracking_uri: str | None = None) -> Tracker:
    """The :class:`Tracker` of a sweep's stored state (``OUTPUT/sweep.json``)."""
    uri = tracking_uri or state["tracking_uri"]
    return Tracker(uri, state["experiment"], state["sweep_id"], state.get("artifact_location"))


def quiet_mlflow() -> None:
    """Keep MLflow's per-call logging and telemetry out of trial logs."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _main(argv: list[str]) -> int:
    """``python -m medaug.tune.tracking URI EXPERIMENT SWEEP_ID [ARTIFACT_LOCATION]``: create
    (or find) the experiment and print its id (see :meth:`Tracker.start_experiment_process`)."""
    import sys

    quiet_mlflow()
    uri, experiment, sweep_id = argv[:3]
    artifacts = argv[3] if len(argv) > 3 and argv[3] else None
    try:
        print(Tracker(uri, experiment, sweep_id, artifacts).experiment_id)
    except MedaugError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
