"""MLflow tracking of a sweep: one experiment per sweep, one parent run per sweep, exactly one
run per trial nested under it.

The default store is a SQLite database beside the results (``sqlite:///OUTPUT/mlflow.db``,
artifacts under ``OUTPUT/mlartifacts``); any tracking URI works (e.g. an ``mlflow server`` on
a cluster's head node).  Nothing goes to the working directory: a new SQLite store is created
with its default artifact root under the sweep's output too.  Runs are named after the trial
key and tagged with it and with the sweep id, so a resumed trial finds its run by tag and
keeps logging into it instead of opening a second one; the sweep's parent run is found the
same way.  Only the trial process (never a training worker) talks to MLflow about a trial.

Why not Ray's own integration (``ray.air.integrations.mlflow``): ``setup_mlflow`` opens a new
run every time a trial function starts (it takes no run to continue, and with reused trial
processes it hands back whichever run is still active), and ``MLflowLoggerCallback`` keeps its
trial -> run map in the driver's memory, keyed by Tune's trial objects, so a sweep restored
after ``kill -9`` opens a second run for every trial that had started.  Neither nests the
trials under a parent run, logs datasets, or sees the files a trial writes.  Finding runs by
tags, as here, keeps one run per trial however often the sweep is resumed.

The experiment opens on its runs table with the columns that compare trials (see
:func:`view_state`), and its description holds the results table.

Metric names (``<stage>`` is ``linear`` or ``e2e``; the target observation has bare names,
other observations are prefixed ``<observation>/``):

* per epoch of pretraining (step = epoch): ``loss``, ``knn_auc``, ``images_per_s``;
* ``knn_auc_best``;
* ``<stage>_auc_mean``, ``<stage>_auc_std``, and per split ``<stage>_auc_split<i>``,
  ``<stage>_ci_low_split<i>``, ``<stage>_ci_high_split<i>``;
* on the sweep's parent run: ``best_<metric>`` and ``best_linear_auc_mean``, the tune metric
  (on the selection set) and the reported AUC of the trial the sweep chose by that metric,
  whose key is the ``best_trial`` tag.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from medaug.errors import MedaugError

TRIAL_TAG = "trial_key"
SWEEP_TAG = "sweep_id"
LABEL_TAG = "trial_label"
KIND_TAG = "trial_kind"  # pretrain | baseline | sweep (the parent run)
SWEEP_KIND = "sweep"
BEST_TAG = "best_trial"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # an experiment's description, shown above its every tab
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow's "model training" kind, not GenAI
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "medaug"  # opened with #/experiments/<id>/runs?viewStateShareKey=medaug
DATASET_CONTEXT_TAG = "mlflow.data.context"
# Per-epoch curves: the loop's own, then the methods' statistics where a method reports them
# (MoCo's own-image negatives; the multi-view MAE's two loss terms, their weighted shares,
# beta and the views' cosine, so that a negligible or collapsing alignment shows).
CURVE_KEYS: tuple[str, ...] = (
    "loss", "knn_auc", "images_per_s", "n_neg_own", "recon", "align", "recon_share",
    "align_share", "beta", "align_cos",
)
STAGES: tuple[str, ...] = ("linear", "e2e")
# Top-level param names (besides the flattened config) that reports group by.
SUMMARY_PARAMS: dict[str, str] = {
    "method": "pretrain.method",
    "criterion": "pretrain.criterion",
    "size_match": "pretrain.size_match",
    "distinct_only": "pretrain.distinct_only",
}
# The summary names each method adds (a name means the same thing in every method that has it:
# the crop's smallest area share, ...).
METHOD_PARAMS: dict[str, dict[str, str]] = {
    "moco": {
        "crop_scale": "pretrain.crop_scale",
        "negatives": "moco.negatives",
        "reweight_t": "moco.reweight_t",
        "hard_negatives_by": "moco.hard_negatives_by",
    },
    "mvmae": {
        "crop_scale": "mvmae.crop_scale",
        "beta_max": "mvmae.beta_max",
        "align": "mvmae.align",
        "mask_ratio": "mvmae.mask_ratio",
        "vit": "mvmae.vit",
    },
}
# The summary params shown as columns of the runs table (the others are one click away).
TABLE_PARAMS: tuple[str, ...] = ("method", "criterion", "crop_scale", "negatives", "beta_max")
UI_PORT = 5000
_MAX_PARAM = 6000  # MLflow's limit on a param value
_MAX_NOTE = 20000  # and on an experiment tag's
_T = TypeVar("_T")


def default_tracking_uri(output: str | Path) -> str:
    """``sqlite:///<abs output>/mlflow.db``: the sweep's own database store."""
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def default_artifact_location(output: str | Path) -> str:
    """``file://<abs output>/mlartifacts``."""
    return (Path(output).resolve() / "mlartifacts").as_uri()


def mlflow_ui_command(tracking_uri: str, port: int = UI_PORT) -> str | None:
    """The command that serves a sweep's SQLite store in the MLflow UI (None for a tracking
    server, which serves its own UI)."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri} --port {port}"


def experiment_url(tracking_uri: str, experiment_id: str, port: int = UI_PORT) -> str:
    """The UI address that opens the experiment on its runs table in the sweep's saved view:
    the comparison columns shown, sorted by the tune metric.  For a SQLite store, the
    address of :func:`mlflow_ui_command`; for a tracking server, the server's own."""
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
    else:
        base = f"http://127.0.0.1:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def view_state(stages: Iterable[str] = ("linear",), choice: str | None = None) -> dict[str, Any]:
    """The saved view the experiment opens on (MLflow's shared view state).

    The MLflow UI (3.x) loads it from the experiment tag ``mlflow.sharedViewState.<key>``
    when the address carries ``viewStateShareKey=<key>``: the search facets (``orderByKey``,
    ``orderByAsc``, ...) and the table's ``selectedColumns``, each named
    ``<attributes|metrics|params|tags>.`<name>```, with their ``columnOrder`` and
    ``columnWidths``.  Sorted by a metric, the runs table lists every trial flat (nested runs
    are grouped under their parent only in date order).

    Args:
        stages: evaluation stages whose AUC columns (``<stage>_auc_mean``, ``_std``) are
            shown; the table is sorted by the first one's mean, best first.
        choice: the metric the sweep chooses trials by (its tune metric), shown too.
    """
    stages = list(stages)
    metrics = [m for stage in stages for m in (f"{stage}_auc_mean", f"{stage}_auc_std")]
    if choice:
        metrics.append(choice)
    dataset = "attributes.`Dataset`"
    shown = [f"metrics.`{m}`" for m in dict.fromkeys(metrics)]
    shown += [f"params.`{p}`" for p in TABLE_PARAMS]
    # The widths apply to the columns listed in the order (ids of MLflow's table): wide
    # enough for the trial keys and criteria, narrow for the rest.
    widths = {"attributes.`Run Name`": 250, "runDateAndNestInfo": 130, dataset: 170, "duration": 80}
    widths |= {c: (120 if c.startswith("metrics.") else 150) for c in shown}
    return {
        "searchFilter": "",
        "orderByKey": f"metrics.`{stages[0]}_auc_mean`",
        "orderByAsc": False,
        "selectedColumns": [dataset, *shown],
        "columnOrder": list(widths),
        "columnWidths": widths,
    }


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


@dataclass
class DatasetRecord:
    """One input of a trial, as MLflow's Dataset column shows it.

    Attributes:
        name: shown name; digest: content hash (at most 36 characters); source: the file;
        profile: small JSON-able facts (rows, patients, ...); context: what the trial used
        it for (``pretraining``, ``evaluation``).
    """

    name: str
    digest: str
    source: str
    profile: dict[str, Any] = field(default_factory=dict)
    context: str = ""


def table_digest(table: Any) -> str:
    """16 hex digits of the SHA-256 over pandas' per-row hashes of the whole table (values,
    column names and row order): two trials show the same digest exactly when they read the
    same metadata."""
    import numpy as np
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([str(c) for c in table.columns]).encode())
    h.update(np.ascontiguousarray(pd.util.hash_pandas_object(table, index=False).to_numpy()).tobytes())
    return h.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """16 hex digits of the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def table_record(table: Any, csv: str | Path, dataset: str) -> DatasetRecord:
    """The metadata table a trial pretrained and evaluated on: its name (the CSV's folder
    and file), digest, rows and patients."""
    csv = Path(csv).resolve()
    return DatasetRecord(
        name=f"{csv.parent.name}/{csv.name}",
        digest=table_digest(table),
        source=str(csv),
        profile={"rows": int(len(table)), "patients": int(table["patient_id"].nunique()),
                 "dataset": dataset},
        context="pretraining",
    )


def splits_record(path: str | Path) -> DatasetRecord:
    """The label-fraction splits a trial's evaluation trained its probes on."""
    path = Path(path).resolve()
    with open(path, "rb") as f:
        rows = max(sum(1 for _ in f) - 1, 0)
    return DatasetRecord(
        name=f"label splits {path.name}", digest=file_digest(path), source=str(path),
        profile={"rows": rows}, context="evaluation",
    )


class Tracker:
    """The MLflow experiment of one sweep.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///...``, ``http://head:5000``, ...).
        experiment: experiment name (the sweep name).
        sweep_id: tags every run, so two sweeps sharing an experiment name stay apart.
        artifact_location: where a newly created experiment stores artifacts (None: the
            store's default, e.g. the server's artifact root); a new SQLite store takes it
            as its default artifact root as well.
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
        """The ``MlflowClient``, made on first use."""
        if self._client is None:
            from mlflow import MlflowClient

            self._create_sqlite_store()
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _create_sqlite_store(self) -> None:
        """Create a new SQLite store with its default artifact root beside it.

        MLflow gives a new store's ``Default`` experiment the artifact location
        ``./mlruns/0`` of whatever the working directory is; made here, it lies under the
        sweep's ``artifact_location`` instead.
        """
        if not (self.tracking_uri.startswith("sqlite:///") and self.artifact_location):
            return
        db = Path(self.tracking_uri[len("sqlite:///") :])
        if db.exists() and db.stat().st_size > 0:
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(self.tracking_uri, self.artifact_location).engine.dispose()

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
                tags={SWEEP_TAG: self.sweep_id, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def set_experiment_tags(self, tags: dict[str, Any]) -> None:
        """Set experiment tags (values longer than MLflow allows are cut)."""
        for key, value in tags.items():
            text = str(value)
            if len(text) > _MAX_NOTE:
                text = text[: _MAX_NOTE - 4] + "\n..."
            _retry(
                lambda key=key, text=text: self.client.set_experiment_tag(self.experiment_id, key, text),
                "experiment tag",
            )

    def setup_experiment(self, view: dict[str, Any], description: str) -> None:
        """Mark the experiment as model training, save the view it opens on (see
        :func:`view_state`) and set its description (markdown)."""
        self.set_experiment_tags({
            EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
            VIEW_TAG_PREFIX + VIEW_KEY: json.dumps(view),
            NOTE_TAG: description,
        })

    def _search(self, filter_string: str) -> list[Any]:
        """Every run of the experiment matching ``filter_string`` (all statuses)."""
        out: list[Any] = []
        token = None
        while True:
            page = _retry(
                lambda token=token: self.client.search_runs(
                    [self.experiment_id], filter_string=filter_string, max_results=1000,
                    page_token=token,
                ),
                "search",
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def find_run(self, key: str) -> Any | None:
        """The run of trial ``key`` in this sweep, or None."""
        runs = self._search(f"tags.{TRIAL_TAG} = '{key}' and tags.{SWEEP_TAG} = '{self.sweep_id}'")
        if not runs:
            return None
        # Should there ever be two (a crash between create and tag), keep the oldest.
        return min(runs, key=lambda r: r.info.start_time or 0)

    def find_sweep_run(self) -> Any | None:
        """The sweep's parent run, or None."""
        runs = self._search(
            f"tags.{KIND_TAG} = '{SWEEP_KIND}' and tags.{SWEEP_TAG} = '{self.sweep_id}'"
        )
        return min(runs, key=lambda r: r.info.start_time or 0) if runs else None

    def start_sweep(self, name: str) -> str:
        """The run id of the sweep's parent run: the existing one (set back to RUNNING, as a
        resumed sweep finds it) or a new one named ``name``."""
        run = self.find_sweep_run()
        if run is not None:
            if run.info.status != "RUNNING":
                _retry(lambda: self.client.update_run(run.info.run_id, status="RUNNING"), "update")
            return run.info.run_id
        tags = {SWEEP_TAG: self.sweep_id, KIND_TAG: SWEEP_KIND}
        created = _retry(
            lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags), "create"
        )
        return created.info.run_id

    def start_trial(
        self, key: str, label: str = "", kind: str = "pretrain", parent: str | None = None
    ) -> str:
        """The run id of trial ``key``: its existing run (set back to RUNNING) or a new one,
        nested under the sweep's run ``parent`` (if given)."""
        run = self.find_run(key)
        if run is not None:
            if run.info.status != "RUNNING":
                _retry(lambda: self.client.update_run(run.info.run_id, status="RUNNING"), "update")
            if parent and run.data.tags.get(PARENT_TAG) != parent:
                self.set_tags(run.info.run_id, {PARENT_TAG: parent})
            return run.info.run_id
        tags = {TRIAL_TAG: key, SWEEP_TAG: self.sweep_id, LABEL_TAG: label or key, KIND_TAG: kind}
        if parent:
            tags[PARENT_TAG] = parent
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
        """Copy a file (or a folder's files) into the run's artifacts (a file of the same
        name there is replaced)."""
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            _retry(
                lambda: self.client.log_artifacts(run_id, str(path), artifact_path), "artifacts"
            )
        else:
            _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path), "artifact")

    def log_datasets(self, run_id: str, records: Iterable[DatasetRecord]) -> None:
        """Log a run's inputs (MLflow's ``log_input``, for a run given by id); logging the
        same dataset to the same run again changes nothing."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(
                    name=r.name, digest=r.digest, source_type="local",
                    source=json.dumps({"uri": Path(r.source).as_uri()}),
                    profile=json.dumps(r.profile),
                ),
                [InputTag(DATASET_CONTEXT_TAG, r.context)] if r.context else [],
            )
            for r in records
        ]
        if inputs:
            _retry(lambda: self.client.log_inputs(run_id, datasets=inputs), "inputs")

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(run_id, tags=items), "tags")

    # -- reading --------------------------------------------------------------------------------

    def runs(self) -> list[Any]:
        """Every trial run of this sweep (all statuses; not the parent run), oldest first."""
        exp = _retry(lambda: self.client.get_experiment_by_name(self.experiment), "experiment")
        if exp is None:
            return []
        self._experiment_id = exp.experiment_id
        out = [
            r for r in self._search(f"tags.{SWEEP_TAG} = '{self.sweep_id}'")
            if r.data.tags.get(KIND_TAG) != SWEEP_KIND
        ]
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
            # The selection set's AUC at each split's chosen epoch: what Tune and Optuna
            # compare trials on (the test AUCs above are only ever reported).
            select = [s.get("select_auc") for s in entry.get("per_split") or []]
            select = [float(v) for v in select if v is not None and math.isfinite(float(v))]
            if select:
                out[f"{prefix}{stage}_select_auc_mean"] = sum(select) / len(select)
            for i, split in enumerate(entry.get("per_split") or []):
                index = str(split.get("split", i))
                tag = index if index.startswith("split") else f"split{index}"
                for name in ("auc", "ci_low", "ci_high"):
                    if split.get(name) is not None:
                        out[f"{prefix}{stage}_{name}_{tag}"] = split[name]
    return {k: v for k, v in out.items() if v is not None}


def best_trial(runs: Iterable[Any], metric: str, mode: str = "max") -> Any | None:
    """The finished run with the best ``metric`` (``mode`` max or min), or None."""
    scored = [
        r for r in runs
        if r.info.status == "FINISHED" and r.data.metrics.get(metric) is not None
        and math.isfinite(r.data.metrics[metric])
    ]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r.data.metrics[metric])


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
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
