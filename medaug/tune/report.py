"""The paper-style results table of a sweep, built from its MLflow runs, with significance.

One row per trial (method, criterion / crop / negatives and options, or a baseline);
per stage (linear probe, end-to-end when it ran): AUC mean ± std over the label splits, and
against a baseline row (default: the ``instance`` criterion without crop and with the
default negatives, MoCo-CXR, when present):

- the difference, the mean of the per-split differences, with its 95% paired t interval
  over the same splits (:func:`medaug.eval.metrics.paired_difference`);
- the two-sided paired t-test's p-value, adjusted by Holm's method over the rows of the
  column (:func:`medaug.eval.metrics.holm_adjust`); a row is significant when the adjusted
  p-value is below 0.05, and only then is its difference printed in bold with ``*``; any
  other row reads ``n.s.``;
- the minimum detectable effect (MDE) at alpha 0.05 and 80% power: the larger of

      the splits'     delta with P(|T| > t_{0.975, n-1}) = 0.8,
                      T ~ noncentral t(n - 1, delta sqrt(n) / s_d)   (about 3.7 s_d / sqrt(n)
                      at n = 5; :func:`medaug.eval.metrics.paired_t_mde`)
      the test set's  (z_{0.975} + z_{0.8}) sqrt(2) SE_HM(A, P, N)   (2.80 sqrt(2) SE;
                      :func:`medaug.eval.metrics.auc_mde`)

  with s_d the split-to-split std of the row's differences, n the number of splits, and
  SE_HM the Hanley-McNeil standard error of the baseline's AUC A on a test set of P
  positives and N negatives (counted from a trial's saved test labels).  A row significant
  over the splits but smaller than the test set's floor gets ``†``: the splits agree, but
  another test set of this size could reverse it.

Written to ``OUTPUT/report/results.md``, ``results.csv`` (every figure, raw and adjusted
p-values, both MDE terms) and ``results.png`` (per stage, each row's difference with its
interval, the baseline as the zero line, the MDE as a band; no baseline: mean ± std).
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
from medaug.files import write_text_atomic
from medaug.tune.tracking import KIND_TAG, LABEL_TAG, STAGES, TRIAL_TAG

STATE_FILE = "sweep.json"
INDEX_TAG = "trial_index"
VARIANT_TAG = "variant"
BASELINE_TAG = "baseline"
STAGE_TITLES = {"linear": "Linear", "e2e": "End-to-end"}
ALPHA = 0.05  # level of every interval and test of the report
POWER = 0.8  # power at which the minimum detectable effect is stated
STAGE_COLUMNS = (
    "mean", "std", "n", "diff", "diff_low", "diff_high", "diff_std", "p", "p_holm",
    "significant", "mde_splits", "mde_test", "mde", "below_floor",
)


@dataclass
class ResultTable:
    """The rows of a sweep's report.

    Attributes:
        rows: one row per trial: ``key``, ``label``, ``kind`` (pretrain | baseline),
            ``status``, ``method``, ``criterion``, ``crop_scale``, ``negatives``, ``options``,
            ``knn_auc_best``, and per stage (linear, e2e) ``<stage>_<column>`` for the
            columns of ``STAGE_COLUMNS``: AUC ``mean``, ``std`` and number of splits ``n``;
            against the baseline ``diff`` (mean paired difference), ``diff_low`` /
            ``diff_high`` (its 95% paired t interval), ``diff_std`` (std of the per-split
            differences), ``p`` (paired t-test), ``p_holm`` (Holm-adjusted over the
            column), ``significant`` (``p_holm`` < alpha), ``mde_splits``, ``mde_test``,
            ``mde`` (the larger of the two) and ``below_floor`` (significant, yet smaller
            than ``mde_test``).
        baseline: key of the row the differences are taken from (None: no differences).
        splits: per row key and stage, the per-split AUCs (``{key: {stage: {split: auc}}}``).
        test_counts: positive and negative test labels of the target (None: unknown).
    """

    rows: pd.DataFrame
    baseline: str | None = None
    title: str = ""
    splits: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    test_counts: tuple[int, int] | None = None

    @property
    def stages(self) -> list[str]:
        """Stages with at least one value (linear, and e2e when it ran)."""
        return [s for s in STAGES if f"{s}_mean" in self.rows and self.rows[f"{s}_mean"].notna().any()]

    def to_markdown(self) -> str:
        """The table as GitHub markdown (numbers to three decimals), with its legend."""
        stages = self.stages
        head = ["Trial", "Method", "Criterion", "Crop", "Negatives", "Options"]
        for s in stages:
            head.append(STAGE_TITLES[s])
            if self.baseline is not None:
                name = STAGE_TITLES[s].lower()
                head += [f"Δ {name} [95% CI]", f"Holm p ({name})", f"MDE ({name})"]
        head.append("Status")
        lines = []
        if self.title:
            lines += [f"### {self.title}", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows.to_dict("records"):
            cells = [
                f"{r['key']}{' (baseline)' if r['key'] == self.baseline else ''}",
                str(r["method"]),
                str(r["criterion"]),
                str(r["crop_scale"]),
                str(r["negatives"]),
                str(r["options"]),
            ]
            for s in stages:
                cells.append(_mean_std(r.get(f"{s}_mean"), r.get(f"{s}_std")))
                if self.baseline is not None:
                    if r["key"] == self.baseline:
                        cells += ["—", "—", "—"]
                    else:
                        cells += [_diff(r, s), _p(r.get(f"{s}_p_holm")), _num(r.get(f"{s}_mde"))]
            cells.append(str(r["status"]).lower())
            lines.append("| " + " | ".join(cells) + " |")
        if self.baseline is not None:
            lines += ["", *self.legend()]
        return "\n".join(lines)

    def legend(self) -> list[str]:
        """What the difference, p, mark and MDE columns mean, one markdown line each."""
        level = f"{100 * (1 - ALPHA):g}%"
        families = ", ".join(
            f"{int(self.rows[f'{s}_p'].notna().sum())} ({STAGE_TITLES[s].lower()})" for s in self.stages
        )
        out = [
            f"Δ: difference from `{self.baseline}`, the mean of the per-split differences over "
            f"the same label splits, with its {level} paired t interval.  ",
            "Holm p: two-sided paired t-test over the splits, adjusted by Holm's method over "
            f"the rows of the column (family sizes: {families}).  ",
            f"`*` significant: Holm-adjusted p < {ALPHA:g}, the difference in bold.  "
            "`n.s.` not significant: the difference cannot be told from split-to-split noise "
            "(even where its own interval excludes zero, before the correction).  ",
        ]
        floors = []
        if self.test_counts is not None:
            for s in self.stages:
                base = self.rows.loc[self.rows["key"] == self.baseline, f"{s}_mde_test"]
                if len(base) and math.isfinite(float(base.iloc[0])):
                    floors.append(f"{float(base.iloc[0]):.3f} ({STAGE_TITLES[s].lower()})")
        splits_mde = (
            f"MDE: the smallest true difference detectable with {100 * POWER:g}% power at "
            f"α = {ALPHA:g}: the larger of the paired-t MDE of the splits (noncentral t with "
            "the row's n splits and std of the differences)"
        )
        if floors:
            n_pos, n_neg = self.test_counts
            out += [
                f"{splits_mde} and the test set's floor (z₀.₉₇₅ + z₀.₈)·√2·SE, SE by "
                f"Hanley–McNeil at the baseline's AUC with {n_pos} positive and {n_neg} "
                f"negative test labels: {', '.join(floors)}.  ",
                "`†` significant over the splits but smaller than the test set's floor: "
                "another test set of this size could reverse it.",
            ]
        else:
            out.append(f"{splits_mde}; the test set's floor is unknown (no saved test labels).")
        return out

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
        write_text_atomic(paths["markdown"], self.to_markdown() + "\n")
        tmp = paths["csv"].with_name("results.csv.tmp")
        self.rows.to_csv(tmp, index=False)
        os.replace(tmp, paths["csv"])
        plot_table(self, paths["plot"])
        return paths


def build_table(
    runs: list[Any],
    baseline: str | None = None,
    title: str = "",
    test_counts: tuple[int, int] | None = None,
) -> ResultTable:
    """The :class:`ResultTable` of MLflow runs (``mlflow.entities.Run`` objects).

    Args:
        runs: the sweep's runs (any status).
        baseline: the row to compare with: a trial key, label or variant name, or a criterion
            name when one row has it; None picks the default (``instance``, no crop, default
            negatives) when present.
        title: heading of the markdown table.
        test_counts: (positive, negative) test labels of the target, for the test set's
            floor of the minimum detectable effect; None leaves that floor out.
    """

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
            rec.update(method="—", criterion=f"{name} (no pretraining)", crop_scale="—",
                       negatives="—", options="")
        else:
            rec.update(
                criterion=params.get("criterion", ""),
                crop_scale=_crop(params.get("crop_scale")),
                method=params.get("method", "moco"),
                # A method without negatives (the multi-view MAE) shows none.
                negatives=params.get("negatives", "—"),
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
        "key", "label", "kind", "status", "variant", "method", "criterion", "crop_scale",
        "negatives", "options", "knn_auc_best",
    ]
    columns += [f"{stage}_{c}" for stage in STAGES for c in STAGE_COLUMNS]
    rows = pd.DataFrame(records, columns=columns + ["index"])
    rows = rows.sort_values(["index", "key"], na_position="last", kind="stable")
    rows = rows.drop(columns=["index"]).reset_index(drop=True)
    chosen = _pick_baseline(rows, baseline)
    for stage in STAGES:
        _compare(rows, splits, chosen, stage, test_counts)
    return ResultTable(rows=rows, baseline=chosen, title=title, splits=splits, test_counts=test_counts)


def _compare(
    rows: pd.DataFrame,
    splits: dict[str, dict[str, dict[str, float]]],
    baseline: str | None,
    stage: str,
    test_counts: tuple[int, int] | None,
) -> None:
    """Fill one stage's comparison columns of ``rows`` in place (see :class:`ResultTable`)."""
    from medaug.eval.metrics import auc_mde, holm_adjust, paired_difference, paired_t_mde

    for col in STAGE_COLUMNS[3:]:
        rows[f"{stage}_{col}"] = False if col in ("significant", "below_floor") else math.nan
    ref = splits.get(baseline, {}).get(stage) if baseline is not None else None
    if not ref:
        return
    floor = math.nan
    base_mean = float(rows.loc[rows["key"] == baseline, f"{stage}_mean"].iloc[0])
    if test_counts is not None and math.isfinite(base_mean) and min(test_counts) > 0:
        floor = auc_mde(base_mean, *test_counts, alpha=ALPHA, power=POWER)
    rows.loc[rows["key"] == baseline, f"{stage}_mde_test"] = floor
    for i, key in enumerate(rows["key"]):
        mine = splits[key][stage]
        common = sorted(set(mine) & set(ref))
        if key == baseline or not common:
            continue
        d = paired_difference({k: mine[k] for k in common}, {k: ref[k] for k in common}, alpha=ALPHA)
        mde_splits = paired_t_mde(d["std_diff"], d["n"], alpha=ALPHA, power=POWER)
        rows.loc[i, [f"{stage}_{c}" for c in ("diff", "diff_low", "diff_high", "diff_std", "p")]] = [
            d["mean_diff"], *(math.nan if d[k] is None else d[k] for k in ("ci_low", "ci_high", "std_diff", "p_value"))
        ]
        rows.loc[i, f"{stage}_mde_splits"] = mde_splits
        rows.loc[i, f"{stage}_mde_test"] = floor
        finite = [v for v in (mde_splits, floor) if math.isfinite(v)]
        rows.loc[i, f"{stage}_mde"] = max(finite) if finite else math.nan
    holm = holm_adjust(rows[f"{stage}_p"].tolist())
    rows[f"{stage}_p_holm"] = holm
    significant = pd.Series(holm < ALPHA, index=rows.index)  # NaN compares False
    rows[f"{stage}_significant"] = significant
    rows[f"{stage}_below_floor"] = significant & (rows[f"{stage}_diff"].abs() < rows[f"{stage}_mde_test"])


def _pick_baseline(rows: pd.DataFrame, baseline: str | None) -> str | None:
    if rows.empty:
        if baseline:
            raise MedaugError(f"baseline {baseline!r}: the sweep has no runs yet")
        return None
    if baseline is None:
        default = rows[
            (rows["kind"] == "pretrain")
            & (rows["method"] == "moco")
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
    """One panel per stage.  With a baseline: each row's difference from it with its 95%
    paired interval (filled: significant after Holm; hollow: n.s.), the baseline as the zero
    line, and a grey band of ± the row's MDE.  Without one: mean AUC ± std per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    stages = table.stages or ["linear"]
    n = max(len(table.rows), 1)
    fig, axes = plt.subplots(
        1, len(stages), figsize=(len(stages) * max(5.0, 0.8 * n + 2.0), 4.8), squeeze=False
    )
    for ax, stage in zip(axes[0], stages, strict=True):
        if table.baseline is None:
            _plot_means(ax, table, stage)
        else:
            _plot_differences(ax, table, stage)
        ax.set_title(STAGE_TITLES[stage] if not table.title else f"{table.title}\n{STAGE_TITLES[stage]}",
                     fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _plot_differences(ax: Any, table: ResultTable, stage: str) -> None:
    import numpy as np

    rows = table.rows[table.rows["key"] != table.baseline].reset_index(drop=True)
    base = table.rows[table.rows["key"] == table.baseline].iloc[0]
    x = np.arange(len(rows))
    diff = rows[f"{stage}_diff"].to_numpy(dtype=float)
    low = np.nan_to_num(diff - rows[f"{stage}_diff_low"].to_numpy(dtype=float))
    high = np.nan_to_num(rows[f"{stage}_diff_high"].to_numpy(dtype=float) - diff)
    mde = rows[f"{stage}_mde"].to_numpy(dtype=float)
    band = np.isfinite(mde)
    if band.any():
        ax.bar(x[band], 2 * mde[band], bottom=-mde[band], width=0.6, color="0.85", zorder=0,
               label=f"± MDE ({100 * POWER:g}% power)")
    ax.axhline(0.0, color="0.2", linestyle="--", linewidth=1,
               label=f"baseline {table.baseline}: {_mean_std(base[f'{stage}_mean'], base[f'{stage}_std'])}")
    significant = rows[f"{stage}_significant"].to_numpy(dtype=bool)
    for mask, face, label in ((significant, "C0", "significant (Holm)"), (~significant, "white", "n.s.")):
        shown = mask & np.isfinite(diff)
        if shown.any():
            ax.errorbar(x[shown], diff[shown], yerr=[low[shown], high[shown]], fmt="o", color="C0",
                        markerfacecolor=face, capsize=4, label=label, zorder=2)
    ax.set_xticks(x)
    ax.set_xticklabels([_short_label(r) for r in rows.to_dict("records")], rotation=35, ha="right",
                       fontsize=8)
    ax.set_xlim(-0.7, max(len(rows), 1) - 0.3)
    ax.set_ylabel(f"Δ AUC vs baseline ({100 * (1 - ALPHA):g}% paired CI)")
    ax.legend(fontsize=7)


def _plot_means(ax: Any, table: ResultTable, stage: str) -> None:
    import numpy as np

    rows = table.rows
    x = np.arange(len(rows))
    means = rows[f"{stage}_mean"].to_numpy(dtype=float)
    stds = np.nan_to_num(rows[f"{stage}_std"].to_numpy(dtype=float))
    shown = np.isfinite(means)
    if shown.any():
        ax.errorbar(x[shown], means[shown], yerr=stds[shown], fmt="o", capsize=4)
    ax.set_xticks(x)
    ax.set_xticklabels([_short_label(r) for r in rows.to_dict("records")], rotation=35, ha="right",
                       fontsize=8)
    ax.set_xlim(-0.7, max(len(rows), 1) - 0.3)
    ax.set_ylabel("AUC (mean ± std over splits)")


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
    runs = tracker.runs()
    table = build_table(runs, baseline=baseline)  # which row is the baseline
    keys = [table.baseline] if table.baseline else []
    keys += [str(k) for k in table.rows["key"] if k != table.baseline]
    counts = heldout_counts(output, keys, state.get("target"))
    return build_table(runs, baseline=table.baseline, title=title, test_counts=counts)


def heldout_counts(
    output: str | Path, keys: list[str], target: str | None = None
) -> tuple[int, int] | None:
    """Positive and negative usable test labels of ``target`` (default: the first evaluated
    observation), read from the first trial in ``keys`` with saved test scores
    (``OUTPUT/trials/<key>/eval/scores/*.npz``), at the evaluation's level (images, or
    studies when it aggregated them).  None when no trial saved any.
    """
    import numpy as np

    from medaug.eval.metrics import aggregate_studies
    from medaug.tune.trial import trial_dir

    for key in keys:
        folder = trial_dir(output, key) / "eval"
        try:
            results = json.loads((folder / "results.json").read_text())
        except (OSError, ValueError):
            continue
        observations = list(results.get("observations") or [])
        name = target or (observations[0] if observations else None)
        if name not in observations:
            continue
        o = observations.index(name)
        for scores in sorted((folder / "scores").glob("*.npz")):
            try:
                with np.load(scores) as z:
                    labels, mask = z["labels"][:, o], z["mask"][:, o].astype(bool)
                    studies = z["studies"] if "studies" in z.files else None
            except (OSError, KeyError, ValueError, IndexError):
                continue
            level = str(results.get("level") or "image")
            if level.startswith("study-") and studies is not None:
                _, labels, _, mask = aggregate_studies(
                    studies, labels, np.zeros(len(labels)), level.split("-", 1)[1], mask
                )
            y = np.asarray(labels)[np.asarray(mask, dtype=bool)]
            return int((y == 1).sum()), int((y == 0).sum())
    return None


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
    if params.get("hard_negatives_by") not in (None, "None", "", "view"):
        out.append(f"hard negatives by {params['hard_negatives_by']}")
    if params.get("method") == "mvmae":
        out.append(f"beta {params.get('beta_max')} ({params.get('align')}), "
                   f"mask {params.get('mask_ratio')}, {params.get('vit')}")
    return "; ".join(out)


def _mean_std(mean: Any, std: Any) -> str:
    if mean is None or not math.isfinite(float(mean)):
        return "—"
    if std is None or not math.isfinite(float(std)):
        return f"{float(mean):.3f}"
    return f"{float(mean):.3f} ± {float(std):.3f}"


def _diff(row: dict[str, Any], stage: str) -> str:
    """``**+0.052** [+0.031, +0.073] *`` when significant, ``+0.004 [-0.010, +0.018] n.s.``
    otherwise: a difference that is noise never looks like a finding."""
    d = row.get(f"{stage}_diff")
    if d is None or not math.isfinite(float(d)):
        return "—"
    lo, hi = row.get(f"{stage}_diff_low"), row.get(f"{stage}_diff_high")
    if lo is None or not math.isfinite(float(lo)):
        return f"{float(d):+.3f} (one split: no interval)"
    interval = f"[{float(lo):+.3f}, {float(hi):+.3f}]"
    if not bool(row.get(f"{stage}_significant")):
        return f"{float(d):+.3f} {interval} n.s."
    if bool(row.get(f"{stage}_below_floor")):
        return f"{float(d):+.3f} {interval} * †"
    return f"**{float(d):+.3f}** {interval} *"


def _p(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "—"
    return "<0.001" if float(value) < 0.001 else f"{float(value):.3f}"


def _num(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "—"
    return f"{float(value):.3f}"


def _short_label(row: dict[str, Any]) -> str:
    if row["kind"] == "baseline":
        return str(row["criterion"])
    parts = [str(row["criterion"])]
    if row["method"] != "moco":
        parts[0] = f"{row['method']}: {parts[0]}"
    if row["crop_scale"] != "none":
        parts.append(f"crop {row['crop_scale']}")
    if row["negatives"] not in ("default", "—"):
        parts.append(str(row["negatives"]))
    if row["options"]:
        parts.append(str(row["options"]))
    return "\n".join(parts) if len(parts) > 1 else parts[0]

