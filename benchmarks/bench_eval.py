"""Nested five-split linear evaluation: cached features versus re-encoding every epoch.

Figures (measured side by side in this process, on a phantom at 128 px with ResNet-18):

- ``one_pass_s``: one frozen-encoder pass over every image the evaluation involves (the
  union of the five splits, the selection set and the test set);
- ``cached_s``: the evaluation as ``medaug evaluate`` runs it: that feature pass (into an
  empty cache) plus all 5 x O linear heads trained at once for the full epoch count;
- ``naive_s``: the naive way, one split at a time, re-encoding the split's images every
  epoch and the selection images for every epoch's model selection.  It is *measured* on
  ``--naive-epochs`` epochs of every split and *extrapolated linearly* to the full count;
- ``cached_over_one_pass`` = cached_s / one_pass_s (goal <= 1.5) and
  ``naive_over_cached`` = naive_s / cached_s.

    python benchmarks/bench_eval.py [--json PATH] [--patients 120] [--epochs 95] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medaug.config import build_config
from medaug.data.augment import eval_transform
from medaug.data.phantom import make_phantom
from medaug.data.splits import evaluation_partitions, label_fraction_splits
from medaug.engine.data import prepare_data
from medaug.eval.features import cached_features, extract_features
from medaug.eval.linear_probe import train_linear_probes
from medaug.eval.metrics import auc
from medaug.models.backbones import build_backbone

GOAL_CACHED_OVER_ONE_PASS = 1.5
OBS = "Pleural Effusion"


def _naive_split(backbone, images, train_rows, y_train, m_train, select_rows, y_sel, m_sel,
                 size, epochs, batch, lr, seed) -> float:
    """Train one split's head re-encoding images every step; returns the wall time."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(512, 1)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(train_rows))
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            keep = torch.from_numpy(m_train[idx])
            if not keep.any():
                continue
            with torch.no_grad():
                x = eval_transform(torch.from_numpy(np.asarray(images[train_rows[idx]])), size)
                f = backbone(x)  # B x 512
            logits = head(f[keep])[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, torch.from_numpy(y_train[idx][m_train[idx]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # model selection: encode the selection set again
            scores = []
            for b in range(0, len(select_rows), 64):
                x = eval_transform(torch.from_numpy(np.asarray(images[select_rows[b : b + 64]])),
                                   size)
                scores.append(head(backbone(x))[:, 0].numpy())
            s = np.concatenate(scores)
            if 0 < y_sel[m_sel].sum() < m_sel.sum():
                auc(y_sel[m_sel], s[m_sel])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--fraction", type=float, default=0.05,
                        help="label fraction per split (1%% of a small phantom is a few images)")
    parser.add_argument("--epochs", type=int, default=95)
    parser.add_argument("--naive-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed feature passes (best)")
    parser.add_argument("--workdir", metavar="DIR", help="default: a temporary folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_eval_"))
    phantom = work / f"phantom-{args.patients}-{args.size}"
    make_phantom(phantom, args.patients, args.size, seed=0, progress=False)
    cfg = build_config({"data": {"dataset": "chexpert", "csv": str(phantom / "train.csv"),
                                 "image_size": args.size, "cache_dir": str(work / "cache")}})
    data = prepare_data(cfg, work, progress=False)
    table = data.table
    parts = evaluation_partitions(table, "chexpert", targets=[OBS])
    splits = label_fraction_splits(table, parts["pool"], fraction=args.fraction, n_splits=5,
                                   targets=[OBS], seed=0)
    rows = np.unique(np.concatenate([*splits, parts["select"], parts["test"]]))
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", "random")
    backbone.eval()
    size = data.image_size

    # Warm-up (first-call allocations), then the fastest of a few timed feature passes:
    # the denominator errs on the small side, so the ratio errs on the large side.
    extract_features(backbone, data.cache, rows[:16], size, device="cpu", progress=False)
    passes = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        extract_features(backbone, data.cache, rows, size, device="cpu", progress=False)
        passes.append(time.perf_counter() - t0)
    one_pass = min(passes)

    t0 = time.perf_counter()
    feats = cached_features(backbone, data.cache, rows, size, work / f"features-{time.time()}",
                            device="cpu", progress=False)
    t_feats = time.perf_counter() - t0
    y, m = data.labels(rows, OBS, "ignore")
    t0 = time.perf_counter()
    train_linear_probes(feats, y, m, [np.searchsorted(rows, s) for s in splits],
                        np.searchsorted(rows, parts["select"]),
                        np.searchsorted(rows, parts["test"]), epochs=args.epochs,
                        progress=False)
    t_probe = time.perf_counter() - t0
    cached = t_feats + t_probe

    naive_measured = 0.0
    for i, s in enumerate(splits):
        yt, mt = data.labels(s, OBS, "ignore")
        ys, ms = data.labels(parts["select"], OBS, "ignore")
        naive_measured += _naive_split(backbone, data.cache, s, yt, mt, parts["select"], ys, ms,
                                       size, args.naive_epochs, 16, 3e-5, i)
    naive = naive_measured * args.epochs / args.naive_epochs

    figures = {
        "images_involved": int(len(rows)),
        "split_sizes": [int(len(s)) for s in splits],
        "select_images": int(len(parts["select"])),
        "test_images": int(len(parts["test"])),
        "size": size,
        "epochs": args.epochs,
        "one_pass_s": one_pass,
        "cached_features_s": t_feats,
        "cached_probe_s": t_probe,
        "cached_s": cached,
        "naive_measured_epochs": args.naive_epochs,
        "naive_measured_s": naive_measured,
        "naive_s": naive,
        "naive_extrapolated": True,
        "cached_over_one_pass": cached / one_pass,
        "naive_over_cached": naive / cached,
        "goal_cached_over_one_pass": GOAL_CACHED_OVER_ONE_PASS,
    }
    print(f"images involved: {len(rows)} (splits {figures['split_sizes']}, select "
          f"{len(parts['select'])}, test {len(parts['test'])}) at {size} px, ResNet-18, "
          f"{args.threads} thread(s)")
    print(f"one feature pass (best of {args.repeats}): {one_pass:8.2f} s")
    print(f"cached: features + 5-split probe ({args.epochs} epochs): "
          f"{t_feats:.2f} + {t_probe:.2f} = {cached:.2f} s")
    print(f"naive: measured {naive_measured:.2f} s on {args.naive_epochs} epochs per split, "
          f"extrapolated linearly to {args.epochs} epochs: {naive:.1f} s")
    ok = figures["cached_over_one_pass"] <= GOAL_CACHED_OVER_ONE_PASS
    print(f"cached_over_one_pass = {figures['cached_over_one_pass']:.3f} "
          f"(goal <= {GOAL_CACHED_OVER_ONE_PASS}: {'met' if ok else 'MISSED'})")
    print(f"naive_over_cached    = {figures['naive_over_cached']:.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
