"""The paper-style results table of a sweep, built from its MLflow runs.

One row per trial (criterion / crop / negatives and options, or a no-pretraining baseline);
columns: linear-probe and end-to-end AUC as mean ± std over the label splits, and the
difference from a baseline row with its paired t interval over the same splits
(:func:`medaug.eval.metrics.paired_difference`).  The default baseline row is the
``instance`` criterion without crop and with the default negatives (MoCo-CXR), when present.

Written to ``OUTPUT/report/results.md``, ``results.csv`` and ``results.png`` (bars with
error bars).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medaug.errors import MedaugError
from medaug.tune.tracking import KIND_TAG, LABEL_TAG, STAGES, TRIAL_TAG

STATE_FILE = "sweep.json"
INDEX_TAG = "trial_index"
VARIANT_TAG = "variant"
BASELINE_TAG = "baseline"
STAGE_TITLES = {"linear": "Linear", "e2e": "End-to-end"}


@dataclass
class ResultTable:
    """The rows of a sweep's report.

    Attributes:
        rows: one row per trial: ``key``, ``label``, ``kind`` (pretrain | baseline),
            ``status``, ``criterion``, ``crop_scale``, ``negatives``, ``options``, and per
            stage (linear, e2e) ``<stage>_mean``, ``<stage>_std``, ``<stage>_n``,
            ``<stage>_diff``, ``<stage>_diff_low``, ``<stage>_diff_high``; ``knn_auc_best``.
        baseline: key of the row the differences are taken from (None: no differences).
        splits: per row key and stage, the per-split AUCs (``{key: {stage: {split: auc}}}``).
    """

    rows: pd.DataFrame
    baseline: str | None = None
    title: str = ""
    splits: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def stages(self) -> list[str]:
        """Stages with at least one value (linear, and e2e when it ran)."""
        return [s for s in STAGES if f"{s}_mean" in self.rows and self.rows[f"{s}_mean"].notna().any()]

    def to_markdown(self) -> str:
        """The table as GitHub markdown (numbers to three decimals)."""
        stages = self.stages
        head = ["Trial", "Criterion", "Crop", "Negatives", "Options"]
        for s in stages:
            head.append(STAGE_TITLES[s])
            if self.baseline is not None:
                head.append(f"Δ {STAGE_TITLES[s].lower()} (95% CI)")
        head.append("Status")
        lines = []
        if self.title:
            lines += [f"### {self.title}", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows.to_dict("records"):
            cells = [
                f"{r['key']}{' (baseline)' if r['key'] == self.baseline else ''}",
                str(r["criterion"]),
                str(r["crop_scale"]),
                str(r["negatives"]),
                str(r["options"]),
            ]
            for s in stages:
                cells.append(_mean_std(r.get(f"{s}_mean"), r.get(f"{s}_std")))
                if self.baseline is not None:
                    cells.append(_diff(r, s) if r["key"] != self.baseline else "—")
            cells.append(str(r["status"]).lower())
            lines.append("| " + " | ".join(cells) + " |")
        if self.baseline is not None:
            lines += [
                "",
                f"Δ: difference from `{self.baseline}` over the same label splits "
                "(paired t interval).",
            ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write ``results.md``, ``results.csv`` and ``results.png`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": folder / "results.md",
            "csv": folder / "results.csv",
            "plot": folder / "results.png",
        }
        _atomic_text(paths["markdown"], self.to_markdown() + "\n")
        tmp = paths["csv"].with_name("results.csv.tmp")
        self.rows.to_csv(tmp, index=False)
        os.replace(tmp, paths["csv"])
        plot_table(self, paths["plot"])
        return paths


def build_table(runs: list[Any], baseline: str | None = None, title: str = "") -> ResultTable:
    """The :class:`ResultTable` of MLflow runs (``mlflow.entities.Run`` objects).

    Args:
        runs: the sweep's runs (any status).
        baseline: the row to compare with: a trial key, label or variant name, or a criterion
            name when one row has it; None picks the default (``instance``, no crop, default
            negatives) when present.
        title: heading of the markdown table.
    """
    from medaug.eval.metrics import paired_difference

    records = []
    splits: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        key = tags.get(TRIAL_TAG) or run.info.run_name
        kind = tags.get(KIND_TAG, "pretrain")
        rec: dict[str, Any] = {
            "key": key,
            "label": tags.get(LABEL_TAG, key),
            "kind": kind,
            "status": run.info.status,
            "index": _int(tags.get(INDEX_TAG)),
            "variant": tags.get(VARIANT_TAG, ""),
        }
        if kind == "baseline":
            name = tags.get(BASELINE_TAG, key)
            rec.update(criterion=f"{name} (no pretraining)", crop_scale="—", negatives="—", options="")
        else:
            rec.update(
                criterion=params.get("criterion", ""),
                crop_scale=_crop(params.get("crop_scale")),
                negatives=params.get("negatives", ""),
                options=_options(params),
            )
        rec["knn_auc_best"] = metrics.get("knn_auc_best", math.nan)
        splits[key] = {}
        for stage in STAGES:
            rec[f"{stage}_mean"] = metrics.get(f"{stage}_auc_mean", math.nan)
            rec[f"{stage}_std"] = metrics.get(f"{stage}_auc_std", math.nan)
            per = {
                name[len(f"{stage}_auc_") :]: value
                for name, value in metrics.items()
                if name.startswith(f"{stage}_auc_split")
            }
            splits[key][stage] = per
            rec[f"{stage}_n"] = len(per)
        records.append(rec)
    columns = [
        "key", "label", "kind", "status", "variant", "criterion", "crop_scale", "negatives",
        "options", "knn_auc_best",
    ]
    for stage in STAGES:
        columns += [f"{stage}_{c}" for c in ("mean", "std", "n", "diff", "diff_low", "diff_high")]
    rows = pd.DataFrame(records, columns=columns + ["index"])
    rows = rows.sort_values(["index", "key"], na_position="last", kind="stable")
    rows = rows.drop(columns=["index"]).reset_index(drop=True)
    chosen = _pick_baseline(rows, baseline)
    for stage in STAGES:
        for col in ("diff", "diff_low", "diff_high"):
            rows[f"{stage}_{col}"] = math.nan
        if chosen is None or not splits.get(chosen, {}).get(stage):
            continue
        ref = splits[chosen][stage]
        for i, key in enumerate(rows["key"]):
            mine = splits[key][stage]
            if key == chosen or not mine:
                continue
            common = sorted(set(mine) & set(ref))
            if not common:
                continue
            d = paired_difference({k: mine[k] for k in common}, {k: ref[k] for k in common})
            rows.loc[i, f"{stage}_diff"] = d["mean_diff"]
            rows.loc[i, f"{stage}_diff_low"] = math.nan if d["ci_low"] is None else d["ci_low"]
            rows.loc[i, f"{stage}_diff_high"] = math.nan if d["ci_high"] is None else d["ci_high"]
    return ResultTable(rows=rows, baseline=chosen, title=title, splits=splits)


def _pick_baseline(rows: pd.DataFrame, baseline: str | None) -> str | None:
    if rows.empty:
        if baseline:
            raise MedaugError(f"baseline {baseline!r}: the sweep has no runs yet")
        return None
    if baseline is None:
        default = rows[
            (rows["kind"] == "pretrain")
            & (rows["criterion"] == "instance")
            & (rows["crop_scale"] == "none")
            & (rows["negatives"] == "default")
            & (rows["options"] == "")
        ]
        scored = default[default["linear_mean"].notna() | default["e2e_mean"].notna()]
        default = scored if not scored.empty else default  # prefer a row with results
        return None if default.empty else str(default["key"].iloc[0])
    for column in ("key", "label", "variant"):
        hit = rows[rows[column] == baseline]
        if len(hit) == 1:
            return str(hit["key"].iloc[0])
    hit = rows[(rows["criterion"] == baseline) | (rows["criterion"] == f"{baseline} (no pretraining)")]
    if len(hit) == 1:
        return str(hit["key"].iloc[0])
    if len(hit) > 1:
        raise MedaugError(
            f"baseline {baseline!r} matches {len(hit)} rows; name one of: {', '.join(hit['key'])}"
        )
    raise MedaugError(f"baseline {baseline!r} is not a row of the sweep; rows: {', '.join(rows['key'])}")


def plot_table(table: ResultTable, path: str | Path) -> Path:
    """Bar chart of mean AUC with ± std error bars, one group per row, one bar per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    rows = table.rows
    stages = table.stages or ["linear"]
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2.0), 4.5))
    width = 0.8 / len(stages)
    x = np.arange(len(rows))
    for j, stage in enumerate(stages):
        means = rows[f"{stage}_mean"].to_numpy(dtype=float) if len(rows) else np.zeros(0)
        stds = np.nan_to_num(rows[f"{stage}_std"].to_numpy(dtype=float)) if len(rows) else np.zeros(0)
        ax.bar(x + (j - (len(stages) - 1) / 2) * width, np.nan_to_num(means), width, yerr=stds,
               capsize=3, label=STAGE_TITLES[stage])
    if len(rows):
        means = rows[[f"{s}_mean" for s in stages]].to_numpy(dtype=float)
        stds = np.nan_to_num(rows[[f"{s}_std" for s in stages]].to_numpy(dtype=float))
        low, high = (means - stds)[np.isfinite(means)], (means + stds)[np.isfinite(means)]
        if low.size:  # the whole error bars in view, the bars' differences readable
            ax.set_ylim(max(0.0, float(low.min()) - 0.05), min(1.0, float(high.max()) + 0.05))
    ax.set_xticks(x)
    ax.set_xticklabels([_short_label(r) for r in rows.to_dict("records")], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("AUC (mean ± std over splits)")
    if table.title:
        ax.set_title(table.title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def read_state(output: str | Path) -> dict[str, Any]:
    """The sweep state stored at ``OUTPUT/sweep.json`` (name, sweep id, tracking URI)."""
    path = Path(output) / STATE_FILE
    if not path.exists():
        raise MedaugError(f"{output} holds no sweep ({STATE_FILE} is missing); run medaug sweep first")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise MedaugError(f"{path} is not valid JSON: {err}") from None


def sweep_table(
    output: str | Path, tracking_uri: str | None = None, baseline: str | None = None
) -> ResultTable:
    """Build the table of the sweep in ``output`` from its MLflow runs."""
    from medaug.tune.tracking import tracker_from_state

    state = read_state(output)
    tracker = tracker_from_state(state, tracking_uri)
    title = f"{state['experiment']}: pleural effusion AUC" if not state.get("target") else (
        f"{state['experiment']}: {state['target']} AUC"
    )
    return build_table(tracker.runs(), baseline=baseline, title=title)


def write_report(
    output: str | Path, tracking_uri: str | None = None, baseline: str | None = None
) -> tuple[ResultTable, dict[str, Path]]:
    """Build the table of the sweep in ``output`` and write it to ``output/report/``."""
    table = sweep_table(output, tracking_uri, baseline)
    return table, table.write(Path(output) / "report")


# ---------------------------------------------------------------------------------------------


def _int(value: Any) -> float:
    try:
        return int(value)
    except (TypeError, ValueError):
        return math.nan


def _crop(value: Any) -> str:
    if value in (None, "None", "none", ""):
        return "none"
    try:
        return f"[{float(value):g}, 1]"
    except ValueError:
        return str(value)


def _options(params: dict[str, str]) -> str:
    out = []
    if params.get("size_match") not in (None, "None", ""):
        out.append(f"size-matched to {params['size_match']}")
    if params.get("distinct_only") == "True":
        out.append("distinct images only")
    if params.get("anchors_with") not in (None, "None", ""):
        out.append(f"anchors with a partner under {params['anchors_with']}")
    if params.get("negatives") == "reweighted" and params.get("reweight_t"):
        out.append(f"t = {params['reweight_t']}")
    return "; ".join(out)


def _mean_std(mean: Any, std: Any) -> str:
    if mean is None or not math.isfinite(float(mean)):
        return "—"
    if std is None or not math.isfinite(float(std)):
        return f"{float(mean):.3f}"
    return f"{float(mean):.3f} ± {float(std):.3f}"


def _diff(row: dict[str, Any], stage: str) -> str:
    d = row.get(f"{stage}_diff")
    if d is None or not math.isfinite(float(d)):
        return "—"
    lo, hi = row.get(f"{stage}_diff_low"), row.get(f"{stage}_diff_high")
    if lo is None or not math.isfinite(float(lo)):
        return f"{float(d):+.3f}"
    return f"{float(d):+.3f} [{float(lo):+.3f}, {float(hi):+.3f}]"


def _short_label(row: dict[str, Any]) -> str:
    if row["kind"] == "baseline":
        return str(row["criterion"])
    parts = [str(row["criterion"])]
    if row["crop_scale"] != "none":
        parts.append(f"crop {row['crop_scale']}")
    if row["negatives"] != "default":
        parts.append(str(row["negatives"]))
    if row["options"]:
        parts.append(str(row["options"]))
    return "\n".join(parts) if len(parts) > 1 else parts[0]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
