"""The sweep end to end: real Ray Tune + Ray Train + MLflow on a tiny phantom.

The default set runs one smoke sweep of two pretraining trials plus an ImageNet baseline
whose weights file is broken, so that trial fails while the others finish; an ``mlflow
server`` is then started on the sweep's database, queried over REST and opened in headless
Chromium at the address the sweep printed.  A second driver on one output is refused, and
a killed driver's lock taken over.  A one-trial sweep is killed with SIGKILL after its first
epoch and resumed.  The slow set kills a whole sweep
(a failing baseline, trials finished and unfinished) and resumes it, and runs a sweep on a
two-node Ray cluster.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from medaug.cli import main as cli_main
from medaug.tune.report import read_state
from medaug.tune.tracking import tracker_from_state

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TWO = ["criterion=instance", "criterion=patient_same_study"]


def _sweep_file(folder: Path, weights: Path | None = None, **pretrain) -> Path:
    """A two-criterion sweep of the demo's settings (the smoke run shrinks it further)."""
    raw = yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())
    raw["name"] = "smoke"
    raw["space"] = {"pretrain.criterion": {"grid": ["instance", "patient_same_study"]}}
    raw["baselines"] = ["imagenet"] if weights else []
    raw["pretrain"].update(pretrain)
    if weights:
        raw["pretrain"]["weights"] = str(weights)
    raw["tune"].update({"max_concurrent": 2, "resources": {"cpu": 0, "gpu": 0}})
    path = folder / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _runs(output: Path) -> dict:
    tracker = tracker_from_state(read_state(output))
    runs = tracker.runs()
    by_key = {r.data.tags["trial_key"]: r for r in runs}
    assert len(by_key) == len(runs), "more than one MLflow run for a trial"
    return by_key


# ---------------------------------------------------------------------------------------------
# Fails before any trial


def test_bad_sweep_fails_before_anything_runs(tmp_path, capsys):
    import ray

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "space": {"pretrain.criterion": ["instance", "nope"]}}))
    out = tmp_path / "out"
    assert cli_main(["sweep", "--config", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown pair criterion 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not ray.is_initialized()
    assert cli_main(["sweep", "--config", "demo", "--output", str(out), "--set", "pretrain.bogus=1"]) == 2
    assert "unknown config key 'pretrain.bogus'" in capsys.readouterr().err
    # Evaluation settings too: every trial would only fail at its evaluation.
    assert cli_main(["sweep", "--config", "demo", "--output", str(out), "--set", "eval.n_splits=0"]) == 2
    assert "eval.n_splits must be at least 1" in capsys.readouterr().err
    assert not out.exists()
    # A paper table without its dataset: refused before Ray starts, naming the key.
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    assert cli_main(["sweep", "--config", "table6", "--output", str(out), "--set", f"pretrain.weights={weights}"]) == 2
    assert "data.csv is not set" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert cli_main(["sweep", "--output", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_dry_run_lists_trials(tmp_path, capsys):
    assert cli_main(["sweep", "--config", "table6", "--output", str(tmp_path), "--dry-run", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "6 trials:" in out and "reweighted_prose_t0.9" in out and "synthetic" in out


# ---------------------------------------------------------------------------------------------
# Shared inputs prepared before Ray starts; one driver per output


def test_sweep_whose_image_cache_fails_reports_that_error(tmp_path):
    """The image cache is built before Ray starts: its error is the sweep's, and no trial
    starts."""
    import ray

    from medaug.data.phantom import make_phantom
    from medaug.errors import MedaugError
    from medaug.tune.sweep import LOCK_FILE, run_sweep

    data = tmp_path / "data"
    make_phantom(data, n_patients=12, image_size=32, workers=1, progress=False)
    gone = data / next(csv.DictReader((data / "train.csv").open()))["Path"]
    gone.unlink()
    out = tmp_path / "out"
    with pytest.raises(MedaugError, match=r"images could not be read \(missing: 1"):
        run_sweep(str(_sweep_file(tmp_path)), out, progress=False, num_cpus=2,
                  overrides=[f"data.csv={data / 'train.csv'}", "data.image_size=32"])
    assert not ray.is_initialized()
    assert not (out / "trials").exists() and not (out / "tune").exists()
    assert (out / "sweep.json").exists()  # --resume continues once the data is fixed
    assert (out / LOCK_FILE).read_text() == ""  # released


def _hold_lock(output: Path) -> subprocess.Popen:
    """Another process holding the driver lock of ``output`` (as a running sweep does)."""
    code = (
        "import sys, time; from pathlib import Path; from medaug.tune.sweep import driver_lock\n"
        "with driver_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([PY, "-c", code, str(output)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_driver_is_refused_and_a_dead_drivers_lock_taken_over(tmp_path, capsys):
    from medaug.tune.sweep import LOCK_FILE, driver_lock

    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        running = f"pid {holder.pid} on {socket.gethostname()}"
        assert running in (out / LOCK_FILE).read_text()
        code = cli_main(["sweep", "--config", "demo", "--smoke", "--output", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"is in use by the sweep driver {running}" in err
        assert not (out / "sweep.json").exists()  # refused before writing anything
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The kernel freed the dead driver's lock; the next driver takes it over and says so.
    with driver_lock(out):
        assert f"pid {os.getpid()} on {socket.gethostname()}" in (out / LOCK_FILE).read_text()
    err = capsys.readouterr().err
    assert f"the driver {running}" in err and "stopped without releasing" in err
    assert (out / LOCK_FILE).read_text() == ""
    with driver_lock(out):  # after a clean exit there is nothing to take over
        pass
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# A smoke sweep through Ray Tune, Ray Train and MLflow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run the smoke sweep once for the module: two criteria and a failing baseline, each
    trial pretraining on a Ray Train worker group (the demo's local mode is covered by the
    slow sweeps below and by the benchmark).  It runs from an empty working directory, and
    what it prints is kept."""
    import torch

    from medaug.tune.sweep import run_sweep

    folder = tmp_path_factory.mktemp("smoke")
    broken = folder / "broken-imagenet.pth"
    broken.write_bytes(b"not a state dict")
    output = folder / "out"
    cwd = folder / "cwd"
    cwd.mkdir()
    torch.set_num_threads(1)
    t0 = time.time()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.chdir(cwd)
        table = run_sweep(
            str(_sweep_file(folder, weights=broken, num_workers=1)), output, smoke=True,
            progress=False, num_cpus=2,
        )
    return {"output": output, "table": table, "seconds": time.time() - t0, "cwd": cwd,
            "printed": printed.getvalue()}


def test_smoke_sweep_runs_every_stage(smoke):
    output, table = smoke["output"], smoke["table"]
    state = json.loads((output / "sweep.json").read_text())
    assert state["trials"] == ["baseline-imagenet", *TWO]
    rows = table.rows.set_index("key")
    assert list(rows["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    runs = _runs(output)
    assert sorted(runs) == sorted(state["trials"])
    for key in TWO:
        run = runs[key]
        assert run.info.status == "FINISHED" and run.info.run_name == key
        m, p = run.data.metrics, run.data.params
        assert p["criterion"] == key.split("=")[1] and p["pretrain.criterion"] == p["criterion"]
        assert p["crop_scale"] == "None" and p["negatives"] == "default"
        assert p["pretrain.epochs"] == "2" and p["data.image_size"] == "32"  # the smoke settings
        assert 0.0 <= m["linear_auc_mean"] <= 1.0 and "linear_auc_std" in m
        assert {"linear_auc_split0", "linear_auc_split1", "linear_ci_low_split0"} <= set(m)
        assert rows.loc[key, "linear_mean"] == pytest.approx(m["linear_auc_mean"])
        # Per-epoch curves, logged at step = epoch.
        client = tracker_from_state(read_state(output)).client
        assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
        folder = output / "trials" / key
        done = json.loads((folder / "trial.json").read_text())
        assert (folder / "pretrain" / "ray" / "pretrain").is_dir()  # a worker group's storage
        assert done["run_id"] == run.info.run_id
        assert done["metrics"]["linear_auc_mean"] == pytest.approx(m["linear_auc_mean"])
        results = json.loads((folder / "eval" / "results.json").read_text())
        assert results["splits_csv"] == str(output / "splits.csv")  # shared by all trials
        assert (folder / "pretrain" / "checkpoints").is_dir()
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "results.json", "splits.csv", "roc.png"} <= artifacts
    # The paired comparison, recomputed with numpy and scipy from the per-split AUCs stored
    # in MLflow (the two trials were scored on the same label splits).
    per = {key: [runs[key].data.metrics[f"linear_auc_split{i}"] for i in range(2)] for key in TWO}
    d = np.subtract(per[TWO[1]], per[TWO[0]])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    row = rows.loc[TWO[1]]
    assert (row["linear_diff"], row["linear_diff_low"], row["linear_diff_high"]) == pytest.approx(
        (d.mean(), d.mean() - half, d.mean() + half)
    )
    assert row["linear_p"] == pytest.approx(stats.ttest_rel(per[TWO[1]], per[TWO[0]]).pvalue)
    assert (output / "report" / "results.md").exists() and (output / "report" / "results.png").exists()


def test_trials_nest_under_the_sweeps_parent_run(smoke):
    """One parent run per sweep: the sweep's name, space and config; the report's files and
    the best trial; every trial run nested under it."""
    output = smoke["output"]
    state = read_state(output)
    tracker = tracker_from_state(state)
    parent = tracker.find_sweep_run()
    assert parent is not None and parent.info.run_name == "smoke"
    assert parent.info.status == "FAILED"  # one trial errored
    runs = _runs(output)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    p = parent.data.params
    assert p["sweep"] == "smoke" and p["sweep_id"] == state["sweep_id"]
    assert p["space.pretrain.criterion"] == "['instance', 'patient_same_study']"
    assert p["trials"] == "3" and p["baselines"] == "['imagenet']"
    client = tracker.client
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"sweep.yaml", "report"}
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert report == {"report/results.md", "report/results.csv", "report/results.png"}
    local = client.download_artifacts(parent.info.run_id, "report/results.md", str(output / "dl"))
    assert Path(local).read_text() == (output / "report" / "results.md").read_text()
    chosen_run = runs[parent.data.tags["best_trial"]]  # and the AUC it reports
    assert parent.data.metrics["best_linear_auc_mean"] == chosen_run.data.metrics["linear_auc_mean"]
    # The best trial is chosen on the selection set, never on the test AUC.
    chosen = {k: runs[k].data.metrics["linear_select_auc_mean"] for k in TWO}
    best = max(chosen, key=chosen.get)
    assert parent.data.tags["best_trial"] == best
    assert parent.data.metrics["best_linear_select_auc_mean"] == pytest.approx(chosen[best])
    # The report is refreshed in MLflow when rebuilt (here: with another baseline row).
    assert cli_main(["report", "--output", str(output), "--baseline", TWO[1]]) == 0
    again = client.download_artifacts(parent.info.run_id, "report/results.md", str(output / "dl2"))
    assert Path(again).read_text() == (output / "report" / "results.md").read_text()
    assert f"`{TWO[1]}`" in Path(again).read_text()
    note = client.get_experiment(tracker.experiment_id).tags["mlflow.note.content"]
    assert note.startswith(Path(again).read_text().strip())


def test_experiment_opens_on_the_runs_table(smoke):
    """The experiment is tagged as model training, holds the saved view of its runs table,
    and the sweep printed the command and the address that open it."""
    output = smoke["output"]
    state = read_state(output)
    tracker = tracker_from_state(state)
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.medaug"])
    assert view["orderByKey"] == "metrics.`linear_auc_mean`" and view["orderByAsc"] is False
    assert {"metrics.`linear_auc_mean`", "params.`criterion`", "params.`crop_scale`",
            "params.`negatives`", "attributes.`Dataset`"} <= set(view["selectedColumns"])
    printed = smoke["printed"]
    assert f"--backend-store-uri {state['tracking_uri']} --port 5000" in printed
    url = f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?viewStateShareKey=medaug"
    assert f"then open {url}\n" in printed


def test_trials_log_their_datasets(smoke):
    """Each trial logs the metadata table (name, digest, rows, patients) and the label
    splits (digest), checked against the files themselves."""
    import hashlib

    from medaug.data.load import load_table

    output = smoke["output"]
    data = output / "smoke_data"
    table = load_table("chexpert", data / "train.csv", include_siblings=True)
    rows = sum(len(list(csv.DictReader((data / f"{s}.csv").open()))) for s in ("train", "valid", "test"))
    patients = {
        Path(r["Path"]).parts[-3]
        for s in ("train", "valid", "test") for r in csv.DictReader((data / f"{s}.csv").open())
    }
    splits_digest = hashlib.sha256((output / "splits.csv").read_bytes()).hexdigest()[:16]
    digests = set()
    for key, run in _runs(output).items():
        if key == "baseline-imagenet":  # failed before its evaluation
            continue
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["label splits splits.csv", "smoke_data/train.csv"]
        meta = inputs["smoke_data/train.csv"]
        profile = json.loads(meta.dataset.profile)
        assert (profile["rows"], profile["patients"]) == (rows, len(patients)) == (len(table), len(patients))
        assert {t.key: t.value for t in meta.tags} == {"mlflow.data.context": "pretraining"}
        assert inputs["label splits splits.csv"].dataset.digest == splits_digest
        digests.add(meta.dataset.digest)
    assert len(digests) == 1  # the same table for every trial


def test_nothing_written_to_the_working_directory(smoke):
    """The store and every artifact location lie under the sweep's output, none in the
    directory the sweep was started from (MLflow's Default experiment included)."""
    output = smoke["output"]
    assert list(smoke["cwd"].iterdir()) == []
    tracker = tracker_from_state(read_state(output))
    for exp in tracker.client.search_experiments():
        assert exp.artifact_location.startswith((output / "mlartifacts").as_uri()), exp



def test_failed_trial_is_errored_without_stopping_the_others(smoke):
    output = smoke["output"]
    runs = _runs(output)
    failed = runs["baseline-imagenet"]
    assert failed.info.status == "FAILED" and "error" in failed.data.tags
    p = failed.data.params  # a baseline shows no pretraining choices in the runs table
    assert (p["criterion"], p["crop_scale"], p["negatives"]) == ("imagenet (no pretraining)", "-", "-")
    assert "linear_auc_mean" not in failed.data.metrics
    error = (output / "trials" / "baseline-imagenet" / "error.txt").read_text()
    assert "Traceback" in error
    assert not (output / "trials" / "baseline-imagenet" / "trial.json").exists()
    assert all(runs[k].info.status == "FINISHED" for k in TWO)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(smoke):
    """``mlflow server`` on the smoke sweep's store, started from an empty folder; yields its
    address."""
    state = read_state(smoke["output"])
    port = _free_port()
    cwd = smoke["output"].parent / "server-cwd"
    cwd.mkdir()
    server = subprocess.Popen(
        [str(Path(PY).with_name("mlflow")), "server", "--backend-store-uri",
         state["tracking_uri"], "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                pytest.fail("mlflow server did not come up")
            time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_mlflow_server_answers_rest_search(smoke, mlflow_server):
    """An ``mlflow server`` on the sweep's database serves its runs over the REST API."""
    output = smoke["output"]
    state = read_state(output)
    base = mlflow_server
    with urllib.request.urlopen(
        f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={state['experiment']}"
    ) as r:
        experiment_id = json.loads(r.read())["experiment"]["experiment_id"]
    body = json.dumps({
        "experiment_ids": [experiment_id],
        "filter": f"tags.sweep_id = '{state['sweep_id']}' and attributes.status = 'FINISHED'"
                  " and tags.trial_kind != 'sweep'",
        "max_results": 100,
    }).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/runs/search", data=body,
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        found = json.loads(r.read())["runs"]
    by_name = {run["info"]["run_name"]: run for run in found}
    assert sorted(by_name) == sorted(TWO)
    local = _runs(output)
    for key, run in by_name.items():
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["linear_auc_mean"] == pytest.approx(local[key].data.metrics["linear_auc_mean"])
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["criterion"] == key.split("=")[1]
    assert list((output.parent / "server-cwd").iterdir()) == []


def _chromium() -> str:
    """Debian's Chromium (``make browser`` installs it); the test is skipped without it,
    except in CI, which must run it."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: `make browser` installs Debian's package")
    pytest.skip("chromium is not installed (`make browser` installs Debian's package)")


def _render(chromium: str, url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The page at ``url`` as headless Chromium renders it (the DOM after its scripts ran
    for up to 30 s of virtual time), or a PNG of it at ``screenshot``."""
    cmd = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", "--window-size=2200,900", "--virtual-time-budget=30000"]
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _GridCells(HTMLParser):
    """Text of every cell of an ag-grid table (MLflow's runs table) in a dumped DOM:
    ``{row index: {column id: text}}``; a row's pinned and scrolled parts share its index."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, str]] = {}
        self._stack: list[tuple[str, int | None, str | None]] = []  # tag, row, cell

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.VOID:
            return
        a = dict(attrs)
        row = self._stack[-1][1] if self._stack else None
        cell = self._stack[-1][2] if self._stack else None
        if a.get("role") == "row" and a.get("row-index", "").isdigit():
            row, cell = int(a["row-index"]), None
        elif row is not None and a.get("role") == "gridcell" and a.get("col-id"):
            cell = a["col-id"]
            self.rows.setdefault(row, {})[cell] = ""
        self._stack.append((tag, row, cell))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1][1] is not None and self._stack[-1][2] is not None:
            _, row, cell = self._stack[-1]
            self.rows[row][cell] += data.strip()


def _runs_table(dom: str) -> list[dict[str, str]]:
    """The rows of MLflow's runs table, top to bottom; a run's name without the colour
    code its cell starts with (the run's colour in charts)."""
    parser = _GridCells()
    parser.feed(dom)
    rows = [parser.rows[i] for i in sorted(parser.rows)]
    for row in rows:
        name = row.get("attributes.`Run Name`")
        if name is not None:
            row["attributes.`Run Name`"] = re.sub(r"^#[0-9a-fA-F]{6}", "", name)
    return rows


def test_runs_table_in_a_browser(smoke, mlflow_server, tmp_path):
    """Headless Chromium opens the address the sweep printed (on the test's server): the
    runs table lists every trial by name with its ``linear_auc_mean`` and criterion, best
    first; the parent run's artifacts hold the report, rendered."""
    chromium = _chromium()
    output = smoke["output"]
    printed = re.search(r"then open (http://\S+)", smoke["printed"]).group(1)
    url = printed.replace("http://127.0.0.1:5000", mlflow_server)
    runs = _runs(output)
    finished = {k: r for k, r in runs.items() if r.info.status == "FINISHED"}
    assert sorted(finished) == sorted(TWO)
    name, auc = "attributes.`Run Name`", "metrics.`linear_auc_mean`"
    for _ in range(3):  # a busy machine may need more than one page load
        table = _runs_table(_render(chromium, url, tmp_path / "profile"))
        shown = {r.get(name): r for r in table}
        if set(finished) <= set(shown) and all(shown[k].get(auc) for k in finished):
            break
    assert set(finished) <= set(shown), table
    for key, run in finished.items():
        # JavaScript prints a float as Python's repr does: the shortest round-trip digits.
        assert shown[key][auc] == repr(run.data.metrics["linear_auc_mean"])
        assert shown[key]["params.`criterion`"] == run.data.params["criterion"]
    listed = [r[name] for r in table if r.get(name) in finished]
    assert listed == sorted(finished, key=lambda k: -finished[k].data.metrics["linear_auc_mean"])

    parent = tracker_from_state(read_state(output)).find_sweep_run()
    base = url.split("/runs?")[0]
    page = _render(chromium, f"{base}/runs/{parent.info.run_id}/artifacts/report/results.md",
                   tmp_path / "profile")
    assert {"results.md", "results.csv", "results.png"} <= set(re.findall(r"results\.\w+", page))
    text = re.sub(r"<[^>]+>", " ", page)
    for key in runs:
        assert key in text  # a row of the rendered table
# ---------------------------------------------------------------------------------------------
# kill -9 and resume: one trial here, a whole sweep in the slow set


def _checkpoints(trials: Path) -> list[Path]:
    """Committed epoch checkpoints (``epoch_NNNN/state.pt``; not a folder still being written)."""
    return [p for p in trials.glob("*/pretrain/checkpoints/epoch_*/state.pt")
            if p.parent.name[len("epoch_"):].isdigit()]


def test_kill_9_mid_pretraining_then_resume(tmp_path):
    """SIGKILL the sweep's driver, and everything it started, as soon as its one trial has
    finished its first of two epochs; ``--resume`` continues that trial from the epoch-1
    checkpoint: each epoch trained once, one MLflow run."""
    config = _sweep_file(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["space"] = {"pretrain.criterion": {"grid": ["patient_same_study"]}}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    key = "criterion=patient_same_study"
    output = tmp_path / "out"
    trials = output / "trials"
    cmd = [PY, "-m", "medaug.cli", "sweep", "--config", str(config), "--output", str(output),
           "--smoke", "--quiet", "--num-cpus", "2",
           "--set", "pretrain.epochs=2", "--set", "pretrain.max_steps_per_epoch=6"]
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.time() + 600
            metrics = trials / key / "pretrain" / "metrics.jsonl"
            while not (_checkpoints(trials) and metrics.exists()
                       and metrics.read_text().endswith("\n")):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint within 600 s"
                time.sleep(0.2)
            family = _children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # The rest goes down with it (a lost machine): no process of the first run
            # keeps training while the second starts.
            for pid in _alive(family):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert [p.parent.name for p in _checkpoints(trials)] == ["epoch_0001"]
    assert not (trials / key / "trial.json").exists()
    first_epoch = metrics.read_text().splitlines()

    resumed = subprocess.run(
        [PY, "-m", "medaug.cli", "sweep", "--output", str(output), "--resume", "--quiet",
         "--num-cpus", "2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = _runs(output)
    assert sorted(runs) == [key]
    run = runs[key]
    assert run.info.status == "FINISHED" and "linear_auc_mean" in run.data.metrics
    assert json.loads((trials / key / "trial.json").read_text())["run_id"] == run.info.run_id
    folder = trials / key / "pretrain"
    events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("start") == 1, events  # not started over
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["epoch"] == 1 and resumes[0]["source"], events
    history = (folder / "metrics.jsonl").read_text().splitlines()
    assert history[: len(first_epoch)] == first_epoch  # epoch 1 was not trained again
    assert [json.loads(h)["epoch"] for h in history] == [1, 2]
    client = tracker_from_state(read_state(output)).client
    assert sorted(h.step for h in client.get_metric_history(run.info.run_id, "loss")) == [1, 2]
    assert (output / "report" / "results.md").exists()


# ---------------------------------------------------------------------------------------------
# Slow: kill -9 and resume of a whole sweep; a two-node cluster


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()}


def _write_imagenet_weights(path: Path) -> None:
    """A valid local ResNet-18 weights file (random values: nothing is downloaded)."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), path)


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path):
    """SIGKILL the sweep mid-way; --resume finishes every trial once, one MLflow run each."""
    weights = tmp_path / "broken.pth"
    weights.write_bytes(b"broken")  # the baseline fails first, and is retried on resume
    config = _sweep_file(tmp_path, weights=weights, epochs=3)
    output = tmp_path / "out"
    cmd = [PY, "-m", "medaug.cli", "sweep", "--config", str(config), "--output", str(output),
           "--smoke", "--quiet", "--num-cpus", "2",
           "--set", "pretrain.epochs=3", "--set", "pretrain.max_steps_per_epoch=6"]
    # --set wins over the smoke run's single epoch: three give the kill something to interrupt.
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    trials = output / "trials"
    deadline = time.time() + 900
    running = f"pid {proc.pid} on {socket.gethostname()}"
    try:
        # A second driver on the running sweep's output is refused, naming the first.
        while running not in _read(output / "driver.lock") or not (output / "sweep.json").exists():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        second = subprocess.run(
            [PY, "-m", "medaug.cli", "sweep", "--output", str(output), "--resume", "--quiet"],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"is in use by the sweep driver {running}" in second.stderr
        # Kill once some trial has a checkpoint and at least one trial is not finished.
        while time.time() < deadline:
            ckpts = _checkpoints(trials)
            done = list(trials.glob("*/trial.json"))
            if ckpts and len(done) < 2:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        family = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        parent_before = tracker_from_state(read_state(output)).find_sweep_run()
        assert parent_before.info.status == "RUNNING"
        finished_before = {p.parent.name: p.stat().st_mtime for p in trials.glob("*/trial.json")}
        interrupted = {p.parents[3].name for p in _checkpoints(trials)} - set(finished_before)
        # Whatever Ray left behind winds down once its driver is gone; wait for it, so the
        # resumed sweep does not share trial folders with stragglers.
        end = time.time() + 120
        while _alive(family) and time.time() < end:
            time.sleep(1)
        for pid in _alive(family):
            os.kill(pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    _write_imagenet_weights(weights)
    resumed = subprocess.run(
        [PY, "-m", "medaug.cli", "sweep", "--output", str(output), "--resume", "--quiet",
         "--num-cpus", "2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=1200,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The dead driver's lock was taken over, and said so.
    assert f"the driver {running} (since" in resumed.stderr
    assert "stopped without releasing" in resumed.stderr
    keys = ["baseline-imagenet", *TWO]
    runs = _runs(output)
    assert sorted(runs) == sorted(keys)
    # The same parent run, now finished with the report; every trial nested under it, once.
    tracker = tracker_from_state(read_state(output))
    parent = tracker.find_sweep_run()
    assert parent.info.run_id == parent_before.info.run_id and parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    every = tracker.client.search_runs([tracker.experiment_id])
    assert len(every) == len(keys) + 1
    assert {a.path for a in tracker.client.list_artifacts(parent.info.run_id, "report")} == {
        "report/results.md", "report/results.csv", "report/results.png"
    }
    for key in keys:
        assert runs[key].info.status == "FINISHED"
        assert "linear_auc_mean" in runs[key].data.metrics
        assert (trials / key / "trial.json").exists()
    # Trials finished before the kill were not run again.
    for key, mtime in finished_before.items():
        assert (trials / key / "trial.json").stat().st_mtime == mtime
    # An interrupted trial resumed from its checkpoint instead of starting over.
    assert interrupted, "the kill came before any checkpoint of an unfinished trial"
    for key in interrupted:
        events = [json.loads(x) for x in (trials / key / "pretrain" / "events.jsonl").read_text().splitlines()]
        assert any(e["event"] == "resume" and e.get("source") for e in events), events
        history = [json.loads(x) for x in (trials / key / "pretrain" / "metrics.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in history] == [1, 2, 3]  # every epoch once
    client = tracker_from_state(read_state(output)).client
    for key in TWO:
        steps = [h.step for h in client.get_metric_history(runs[key].info.run_id, "loss")]
        assert sorted(steps) == [1, 2, 3]
    # Resuming a complete sweep starts no Ray: it rebuilds the report into the same parent.
    again = subprocess.run(
        [PY, "-m", "medaug.cli", "sweep", "--output", str(output), "--resume", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Started a local Ray instance" not in again.stdout + again.stderr
    assert f"then open http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs" in again.stdout
    assert len(tracker.client.search_runs([tracker.experiment_id])) == len(keys) + 1
    assert tracker.find_sweep_run().info.run_id == parent.info.run_id


@pytest.mark.slow
def test_sweep_on_a_two_node_ray_cluster(tmp_path):
    """``sweeps/sweep.py`` against a real two-node Ray cluster (head + joined worker)."""
    ray_bin = str(Path(PY).with_name("ray"))
    port = _free_port()
    temp = Path("/tmp") / f"medaug-ray-{os.getpid()}"  # our cluster's own session folder
    # Token authentication on every node, as Ray requires it to be consistent.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}
    try:
        subprocess.run(
            [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
             f"--temp-dir={temp}", "--disable-usage-stats"],
            check=True, capture_output=True, env=env, timeout=300,
        )
        subprocess.run(
            [ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--disable-usage-stats"],
            check=True, capture_output=True, env=env, timeout=300,
        )

        nodes = subprocess.run(
            [PY, "-c", "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"],
            capture_output=True, text=True, timeout=300,
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
        )
        assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]
        output = tmp_path / "out"
        run = subprocess.run(
            [PY, str(REPO / "sweeps" / "sweep.py"), "--config", str(_sweep_file(tmp_path)),
             "--output", str(output), "--smoke", "--quiet"],
            capture_output=True, text=True, timeout=1200, cwd=tmp_path,
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        runs = _runs(output)
        assert sorted(runs) == sorted(TWO)
        assert all(r.info.status == "FINISHED" for r in runs.values())
        assert read_state(output)["tracking_uri"].startswith("sqlite:///")  # no server here
    finally:
        # Stop both nodes: the processes naming our cluster's temp folder, and their children
        # (never `ray stop`, which would stop every Ray on the machine).
        pids = set()
        for pid in _ray_pids(temp):
            pids |= {pid} | _children(pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_optuna_sweep_with_asha_and_baselines(tmp_path):
    """Continuous ranges: Optuna draws the trials, ASHA may stop some, baselines run too."""
    from medaug.tune.sweep import run_sweep

    raw = {
        "name": "optuna",
        "pretrain": {"epochs": 2, "num_workers": 0},  # Ray Train's local mode
        "space": {
            "pretrain.lr": {"loguniform": [1e-4, 1e-3]},
            "pretrain.criterion": {"grid": ["instance", "patient_same_study"]},
        },
        "tune": {"num_samples": 2, "max_concurrent": 2, "resources": {"cpu": 0},
                 "asha": {"metric": "knn_auc", "grace_period": 1, "reduction_factor": 2}},
        "baselines": ["random"],
    }
    config = tmp_path / "optuna.yaml"
    config.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"
    table = run_sweep(str(config), output, smoke=True, overrides=["pretrain.epochs=2"],
                      progress=False, num_cpus=2)
    runs = _runs(output)
    assert len(runs) == 3 and "baseline-random" in runs
    assert runs["baseline-random"].info.status == "FINISHED"
    drawn = [r for k, r in runs.items() if k != "baseline-random"]
    for run in drawn:
        lr = float(run.data.params["pretrain.lr"])
        assert 1e-4 <= lr <= 1e-3
        assert re.fullmatch(r"criterion=\w+,lr=[0-9.e-]+-[0-9a-f]{8}", run.info.run_name)
        # Finished with its metrics, or stopped early by ASHA and closed as KILLED.
        if run.info.status == "FINISHED":
            assert "linear_auc_mean" in run.data.metrics
        else:
            assert run.info.status == "KILLED" and "linear_auc_mean" not in run.data.metrics
    assert any(r.info.status == "FINISHED" for r in drawn)
    assert set(table.rows["key"]) == set(runs)
    assert (output / "tune" / "optuna-baselines").is_dir() and (output / "tune" / "optuna").is_dir()
    # Local mode: each epoch's kNN AUC went to Tune (what ASHA ranks by), no worker group ran.
    for run in drawn:
        progress = output / "tune" / "optuna" / run.info.run_name / "progress.csv"
        rows = list(csv.DictReader(progress.open()))
        assert rows[0]["epoch"] == "1" and rows[0]["knn_auc"] != ""
        assert not (output / "trials" / run.info.run_name / "pretrain" / "ray").exists()


def _ray_pids(temp: Path) -> list[int]:
    """Processes of our test cluster: those whose command line names its temp folder."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if str(temp) in cmdline:
            out.append(int(entry.name))
    return out


def test_trial_resources(tmp_path):
    from medaug.tune.space import load_sweep
    from medaug.tune.sweep import TRIAL_MEMORY, trial_resources

    def resources(*overrides):
        return trial_resources(load_sweep("demo", list(overrides), output=tmp_path))

    workers = "pretrain.num_workers=1"
    assert resources(workers, "tune.resources={cpu: 2, gpu: 0.5}") == {"cpu": 2, "gpu": 0.5}
    # Asking for nothing still reserves something, or Tune refuses the request.
    assert resources(workers, "tune.resources={cpu: 0, gpu: 0}") == {
        "cpu": 0, "gpu": 0, "memory": TRIAL_MEMORY
    }
    # Local mode: the trial process trains, so it reserves the training's resources.
    local = "pretrain.num_workers=0"
    assert resources(local, "tune.resources={cpu: 0, gpu: 0}") == {"cpu": 1.0, "gpu": 0}
    assert resources(local, "pretrain.cpus_per_worker=2", "pretrain.use_gpu=true",
                     "tune.resources={cpu: 1, gpu: 0}") == {"cpu": 2.0, "gpu": 1}
    assert resources(local, "tune.resources={cpu: 3, gpu: 0}") == {"cpu": 3, "gpu": 0}
