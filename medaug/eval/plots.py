"""ROC curves of the nested evaluation: one panel per (observation, linear / end-to-end).

Each split's test ROC is drawn thin; the mean curve (true-positive rates averaged over
splits at common false-positive rates, "vertical averaging") is drawn bold with the mean AUC.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medaug.errors import MedaugError

GRID = np.linspace(0.0, 1.0, 201)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / max(y.sum(), 1)]
    fpr = np.r_[0.0, fp / max(len(y) - y.sum(), 1)]
    return fpr, tpr


def _load_kind(out_dir: Path, kind: str) -> list[dict[str, np.ndarray]]:
    """Per split: scores N x O, labels N x O, mask N x O, studies N."""
    scores_dir = out_dir / "scores"
    if kind == "linear":
        path = scores_dir / "linear.npz"
        if not path.exists():
            return []
        with np.load(path) as z:
            return [{"scores": z["scores"][i], "labels": z["labels"], "mask": z["mask"],
                     "studies": z["studies"]} for i in range(z["scores"].shape[0])]
    out = []
    for path in sorted(scores_dir.glob("e2e_split*.npz"),
                       key=lambda p: int(p.stem.removeprefix("e2e_split"))):
        with np.load(path) as z:
            out.append({"scores": z["scores"], "labels": z["labels"], "mask": z["mask"],
                        "studies": z["studies"]})
    return out


def plot_roc(
    out_dir: str | Path,
    png: str | Path,
    observations: list[str] | None = None,
    level: str | None = None,
) -> Path:
    """Draw the test ROC curves saved under ``out_dir/scores`` into one PNG.

    Args:
        out_dir: an evaluation folder (``scores/linear.npz``, ``scores/e2e_split*.npz``).
        png: output file.
        observations: panel titles (default: read from ``out_dir/results.json``).
        level: None (image level) or "max"/"mean" (study-level aggregation first).
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medaug.eval.metrics import aggregate_studies, auc

    out_dir, png = Path(out_dir), Path(png)
    kinds = [(k, runs) for k in ("linear", "e2e") if (runs := _load_kind(out_dir, k))]
    if not kinds:
        raise MedaugError(f"{out_dir} holds no test scores to plot (scores/*.npz)")
    n_obs = kinds[0][1][0]["scores"].shape[1]
    if observations is None:
        results = out_dir / "results.json"
        observations = (json.loads(results.read_text()).get("observations")
                        if results.exists() else None) or [f"obs {o}" for o in range(n_obs)]
    fig, axes = plt.subplots(n_obs, len(kinds), figsize=(4.2 * len(kinds), 4.0 * n_obs),
                             squeeze=False)
    for col, (kind, runs) in enumerate(kinds):
        for o in range(n_obs):
            ax = axes[o, col]
            curves, aucs = [], []
            for i, run in enumerate(runs):
                y, s, m = run["labels"][:, o], run["scores"][:, o], run["mask"][:, o]
                if level:
                    _, y, s, m = aggregate_studies(run["studies"], y, s, level, m)
                y, s = y[m].astype(float), s[m].astype(float)
                fpr, tpr = roc_points(y, s)
                ax.plot(fpr, tpr, lw=0.8, alpha=0.5, label=f"split {i}")
                # np.interp takes the last tpr at a repeated fpr: the upper step of the curve.
                curves.append(np.interp(GRID, fpr, tpr))
                aucs.append(auc(y, s))
            mean = np.mean(curves, axis=0)
            mean[0] = 0.0
            sd = np.std(aucs, ddof=1) if len(aucs) > 1 else 0.0
            ax.plot(GRID, mean, color="black", lw=2.2,
                    label=f"mean (AUC {np.mean(aucs):.3f} ± {sd:.3f})")
            ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
            title = "linear probe" if kind == "linear" else "end-to-end"
            ax.set_title(f"{observations[o]}: {title}", fontsize=10)
            ax.set_xlabel("false-positive rate")
            ax.set_ylabel("true-positive rate")
            ax.set_aspect("equal")
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f"{png.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
    return png
