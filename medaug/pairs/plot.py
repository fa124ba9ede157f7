"""Figure of a pair index's statistics: set sizes beside label disagreement (Appendix A)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_pair_stats(stats: dict[str, Any], png: str | Path) -> Path:
    """Draw the set-size distribution and the label-disagreement histogram side by side.

    Args:
        stats: a dict from :func:`medaug.pairs.pair_stats` (``label_disagreement`` optional;
            without it the right panel says so).
        png: output path; written to a temporary file first, then renamed.
    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    hist = stats["set_size_hist"]
    sizes = [int(s) for s in hist]
    left.bar(sizes, [hist[s] for s in hist], width=0.8, color="tab:blue")
    left.set_xlabel("size of the sampled set")
    left.set_ylabel("anchors")
    left.set_title(
        f"{stats['criterion']}: {stats['n_anchors']} anchors, {stats['n_fallback']} fallback"
    )
    dis = stats.get("label_disagreement")
    if dis is not None:
        edges = dis["hist"]["edges"]
        counts = dis["hist"]["counts"]
        total = max(sum(counts), 1)
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        right.bar(
            edges[:-1],
            [c / total for c in counts],
            width=widths,
            align="edge",
            color="tab:orange",
            edgecolor="white",
        )
        right.set_xlabel(f"share of the set with a different {dis['observation']} label")
        right.set_ylabel("share of anchors")
        right.set_xlim(0.0, 1.0)
        right.set_title(f"all different: {100 * (dis['share_all_different'] or 0.0):.1f}%")
    else:
        right.axis("off")
        right.text(0.5, 0.5, "no label given", ha="center", va="center")
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, png)
    return png
