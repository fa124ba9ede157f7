"""The nested label-scarce evaluation of one encoder (section 2.3 of the MedAug paper).

    partitions (pool / selection / test, patient-disjoint)
      -> five seeded 1% label splits of the pool (saved, reused by every trial)
      -> linear probe: features once, all (split, observation) heads at once
      -> optional end-to-end fine-tune of each split (Ray Train workers)
      -> per-split test AUC with a bootstrap interval, mean +- std over splits

``results.json`` (schema below) is rewritten atomically after every finished stage or split;
a rerun in the same folder with the same encoder and settings skips what is done.

    {"linear": {obs: {"per_split": [{"split", "auc", "ci_low", "ci_high", "best_epoch",
                                     "select_auc"}], "mean", "std", "n"}},
     "e2e": {...same...} (only when fine-tuning ran),
     "config": flattened eval config, "uncertain": policy, "splits_csv": path,
     "level": "image" | "study-max" | "study-mean", "encoder": {...}, "sizes": {...},
     "selection": {"name", "source", "rows", "patients"}: the set every epoch was chosen on,
     "test": {...same...}: the set the AUCs are computed on,
     "pretraining": {"selected_by", "selection", "test"} of the checkpoint's run (or null)}

Per-split scores are saved beside it (``scores/linear.npz``: ``scores`` S x N_test x O,
``rows``, ``labels``, ``mask``, ``studies``; ``scores/e2e_split{i}.npz``: N_test x O), so
every AUC can be recomputed from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medaug.config import Config, check_config, config_to_dict, flatten, write_config
from medaug.errors import MedaugError
from medaug.files import write_json_atomic

BASELINES: tuple[str, ...] = ("random", "imagenet")
RESULTS_FILE = "results.json"
KINDS: tuple[str, ...] = ("linear", "e2e")

# (cfg, out_dir, split, checkpoint, baseline, FinetuneData, FinetuneSettings, state_path,
#  progress=...) -> {"test_scores", "best_epoch", "select_auc"}
FinetuneRunner = Callable[..., dict[str, Any]]


def check_baseline(name: str) -> str:
    if name not in BASELINES:
        raise MedaugError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    return name


def eval_backbone(
    cfg: Config, checkpoint: str | Path | None, baseline: str | None
) -> tuple[Any, int, dict[str, Any]]:
    """The encoder to evaluate: a pretraining checkpoint or a baseline.

    Args:
        checkpoint: a run folder, checkpoint folder or state file (``load_backbone``).
        baseline: "random" (the method's encoder, seeded by ``cfg.seed``) or "imagenet" (a
            torchvision ``cfg.pretrain.arch`` with the local weights file
            ``cfg.pretrain.weights``); exactly one of the two must be given.

    Returns:
        (backbone in eval mode mapping N x 3 x R x R to N x D, D, description dict).
    """
    backbone, dim, info, _ = _load_encoder(cfg, checkpoint, baseline)
    return backbone, dim, info


def _load_encoder(
    cfg: Config, checkpoint: str | Path | None, baseline: str | None
) -> tuple[Any, int, dict[str, Any], dict[str, Any] | None]:
    """:func:`eval_backbone` plus the checkpoint's saved config (None for a baseline)."""
    import torch

    if (checkpoint is None) == (baseline is None):
        raise MedaugError("give exactly one of a checkpoint and a baseline (random, imagenet)")
    if checkpoint is not None:
        from medaug.engine.checkpoint import load_backbone

        if not Path(checkpoint).exists():
            raise MedaugError(f"checkpoint {checkpoint} does not exist")
        backbone, saved = load_backbone(checkpoint)
        info = {"source": "checkpoint", "path": str(checkpoint),
                "method": saved.get("pretrain", {}).get("method", "moco"),
                "arch": saved.get("pretrain", {}).get("arch"),
                "criterion": saved.get("pretrain", {}).get("criterion")}
    else:
        check_baseline(baseline)
        backbone = _baseline_encoder(cfg, baseline)
        info = {"source": "baseline", "name": baseline, "method": cfg.pretrain.method,
                "arch": cfg.pretrain.arch, "module": type(backbone).__name__}
        saved = None
    backbone.eval()
    with torch.no_grad():  # at the size evaluation feeds it (a ViT takes no other)
        size = cfg.data.image_size
        dim = int(backbone(torch.zeros(1, 3, size, size)).shape[1])  # 1 x D
    return backbone, dim, info, saved


def _baseline_encoder(cfg: Config, baseline: str) -> Any:
    """A baseline encoder, seeded by ``cfg.seed`` so that every process (driver and
    fine-tuning workers) builds the same one.

    random: the evaluated encoder of ``pretrain.method`` (``Method.backbone_from_config``:
    MoCo's ``pretrain.arch``, the multi-view MAE's ViT) with its initial weights.
    imagenet: the torchvision backbone ``pretrain.arch`` with the local ImageNet weights
    ``pretrain.weights``.

    Raises:
        MedaugError: no weights file, an architecture without torchvision ImageNet weights,
            or a method that starts from none (the multi-view MAE).
    """
    import copy

    import torch

    from medaug.methods import get_method
    from medaug.models.backbones import BACKBONES, build_backbone, check_arch

    method = get_method(cfg.pretrain.method)
    if baseline == "random":
        torch.manual_seed(cfg.seed)
        return method.backbone_from_config(cfg)
    weights, arch = cfg.pretrain.weights, check_arch(cfg.pretrain.arch, cfg.data.image_size)
    if not weights:
        raise MedaugError(
            "the imagenet baseline needs pretrain.weights = PATH (a local weights file; "
            "nothing is downloaded)"
        )
    if not Path(weights).exists():
        raise MedaugError(f"pretrain.weights file {weights} does not exist")
    if BACKBONES[arch].patch is not None:
        torchvision = ", ".join(name for name, spec in BACKBONES.items() if spec.patch is None)
        raise MedaugError(
            f"the imagenet baseline loads torchvision ImageNet weights: pretrain.arch must be "
            f"one of {torchvision}, got {arch!r}"
        )
    # The method's own rule on ImageNet initialisation (the multi-view MAE has none).
    imagenet = copy.deepcopy(cfg)
    imagenet.pretrain.init = "imagenet"
    method.check(imagenet)
    torch.manual_seed(cfg.seed)
    return build_backbone(arch, "imagenet", weights, cfg.data.image_size)[0]


# --- the sets that select and test ------------------------------------------------------------


def _pretraining_summary(checkpoint: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of the pretraining run a checkpoint belongs to (a run folder, one of
    its checkpoint folders or a state file inside one), or None when there is none."""
    path = Path(checkpoint)
    for folder in (path, *list(path.parents)[:3]):
        summary = folder / "summary.json"
        if summary.is_file() and (folder / "checkpoints").is_dir():
            try:
                return json.loads(summary.read_text())
            except (OSError, ValueError):
                return None
    return None


def _check_pretraining_sets(
    saved: dict[str, Any], cfg: Config, data: Any, parts: Any
) -> None:
    """No test patient of this evaluation was among the images the checkpoint's pretraining
    learned from or selected its epoch on (its own partitions, from its saved config).

    Checked when the checkpoint was trained on the same metadata CSV; another dataset has
    other patients.

    Raises:
        MedaugError: naming how many test patients pretraining saw.
    """
    from medaug.data.splits import check_disjoint
    from medaug.engine.data import partition_settings, partitions_for, pretraining_rows

    saved_data = saved.get("data") or {}
    if not saved_data.get("csv") or not cfg.data.csv:
        return
    if Path(saved_data["csv"]).resolve() != Path(cfg.data.csv).resolve():
        return
    if partition_settings(saved) == partition_settings(cfg):
        pre = parts
    else:
        try:
            pre = partitions_for(data.table, saved)
        except MedaugError:
            return  # its settings cannot cut this table: it was prepared otherwise
    seen = np.union1d(pretraining_rows(data, pre), pre["select"])
    check_disjoint(data.table, {"checkpoint's pretraining (images and selection)": seen,
                                "test": parts["test"]})


# --- results file -----------------------------------------------------------------------------




def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _save_npz(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _summarised(entry: dict[str, Any]) -> dict[str, Any]:
    from medaug.eval.metrics import summarise

    entry["per_split"].sort(key=lambda r: r["split"])
    entry.update(summarise([r["auc"] for r in entry["per_split"]]))
    return entry


# --- scoring ----------------------------------------------------------------------------------


class _TestSet:
    """Test rows with their labels, and the study-level view when asked for."""

    def __init__(self, table, rows: np.ndarray, observations: list[str], uncertain: str,
                 level: str | None) -> None:
        from medaug.data.schema import label_values
        from medaug.eval.metrics import aggregate_studies

        self.rows, self.observations, self.level = rows, observations, level
        sub = table.iloc[rows]
        self.studies = sub["study_id"].to_numpy()
        self.labels = np.zeros((len(rows), len(observations)), np.float32)
        self.mask = np.zeros((len(rows), len(observations)), bool)
        for o, obs in enumerate(observations):
            self.labels[:, o], self.mask[:, o] = label_values(sub, obs, uncertain)
            y, m = self.labels[:, o], self.mask[:, o]
            if level:
                _, y, _, m = aggregate_studies(self.studies, y, np.zeros(len(y)), level, m)
            n_pos, n_neg = int((y[m] == 1).sum()), int((y[m] == 0).sum())
            if n_pos == 0 or n_neg == 0:
                raise MedaugError(
                    f"the test set ({len(rows)} images) has {n_pos} positive and {n_neg} "
                    f"negative usable {obs!r} labels: its AUC is undefined; use more data "
                    "or another observation"
                )

    def score(self, scores: np.ndarray, o: int, n_boot: int, seed: int) -> dict[str, Any]:
        """AUC and bootstrap interval of one observation's test scores (N_test)."""
        from medaug.eval.metrics import aggregate_studies, auc, bootstrap_ci

        y, m, s = self.labels[:, o], self.mask[:, o], scores
        if self.level:
            # Studies are the unit once scores are aggregated, so studies are resampled.
            _, y, s, m = aggregate_studies(self.studies, y, s, self.level, m)
        value = auc(y, s, m)
        low = high = None  # no interval when eval.bootstrap = 0
        if n_boot > 0:
            low, high = bootstrap_ci(y, s, n=n_boot, seed=seed, mask=m)
        return {"auc": value, "ci_low": low, "ci_high": high}


def _labels(table, rows: np.ndarray, observations: list[str], uncertain: str):
    from medaug.data.schema import label_values

    y = np.zeros((len(rows), len(observations)), np.float32)
    m = np.zeros((len(rows), len(observations)), bool)
    sub = table.iloc[rows]
    for o, obs in enumerate(observations):
        y[:, o], m[:, o] = label_values(sub, obs, uncertain)
    return y, m


def _run_key(encoder_hash: str, cfg: Config, splits: list[np.ndarray]) -> str:
    """Fingerprint of everything the results depend on; another key discards old results.

    ``splits``: every row set involved (the label splits, the selection and test rows)."""
    h = hashlib.sha256(encoder_hash.encode())
    h.update(json.dumps(flatten(config_to_dict(cfg.eval)), sort_keys=True, default=str).encode())
    d = cfg.data
    h.update(json.dumps([d.dataset, d.csv, d.image_size, d.uncertain], default=str).encode())
    for rows in splits:
        h.update(np.asarray(rows, np.int64).tobytes())
    return h.hexdigest()[:16]


# --- the evaluation ---------------------------------------------------------------------------


def evaluate(
    cfg: Config,
    checkpoint: str | Path | None,
    out_dir: str | Path,
    baseline: str | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    finetune_runner: FinetuneRunner | None = None,
) -> dict[str, Any]:
    """Nested label-scarce evaluation of a checkpoint or a baseline encoder.

    Args:
        cfg: resolved config (``data`` for the images, ``eval`` for the protocol,
            ``pretrain.method`` and its section, ``pretrain.arch`` / ``pretrain.weights`` for
            baselines, ``seed``).
        checkpoint: pretraining checkpoint (run folder, checkpoint folder or state file), or
            None with ``baseline``.
        out_dir: results folder: results.json, splits.csv, features/, scores/, e2e/, roc.png.
        baseline: "random" or "imagenet" instead of a checkpoint.
        report: called with a flat dict after the linear probe and after each fine-tuned
            split (``{"kind", "split", "observation", "auc", "ci_low", "ci_high"}``).
        progress: progress bars on stderr.
        finetune_runner: runs one split's end-to-end fine-tuning elsewhere (the Ray Train
            one is ``medaug.tune.finetune_trainer.run_finetune_ray``); None fine-tunes in
            this process.

    Returns:
        the results dict, as written to ``out_dir/results.json``.
    """
    import torch

    from medaug.data.splits import check_disjoint, splits_for
    from medaug.engine.data import partitions_for, prepare_data
    from medaug.eval.features import module_hash

    e = cfg.eval
    check_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    observations = list(e.observations)
    uncertain = cfg.data.uncertain

    backbone, dim, info, saved = _load_encoder(cfg, checkpoint, baseline)
    encoder_hash = module_hash(backbone)
    info["hash"] = encoder_hash
    data = prepare_data(cfg, out_dir, progress=progress)
    table = data.table
    # The same partitions as pretraining's kNN monitor: every choice below (probe epoch,
    # fine-tuning epoch) scores on parts["select"]; parts["test"] is only ever scored.
    parts = partitions_for(table, cfg)
    pretraining: dict[str, Any] | None = None
    if saved is not None:
        _check_pretraining_sets(saved, cfg, data, parts)
        summary = _pretraining_summary(checkpoint)
        if summary is not None:
            pretraining = {k: summary.get(k) for k in ("selected_by", "selection", "test")}
            if summary.get("best_knn_auc") is not None and summary.get("selection") is None:
                print(f"warning: {checkpoint} does not record which set its kNN monitor "
                      "selected on; it may have been the test set", file=sys.stderr)
    splits_csv = Path(e.splits_csv) if e.splits_csv else out_dir / "splits.csv"
    splits = splits_for(
        splits_csv, table, parts["pool"], fraction=e.fraction, n_splits=e.n_splits,
        by=e.split_by, targets=observations, uncertain=uncertain, seed=e.split_seed,
        min_per_class=e.min_per_class,
    )
    # The invariant that makes the numbers honest: no training patient is tested on.
    check_disjoint(table, {"training splits": np.unique(np.concatenate(splits)),
                           "selection": parts["select"], "test": parts["test"]})
    test = _TestSet(table, parts["test"], observations, uncertain, e.study_level)

    run_key = _run_key(encoder_hash, cfg, [*splits, parts["select"], parts["test"]])
    results_path = out_dir / RESULTS_FILE
    results: dict[str, Any] = {}
    if results_path.exists():
        try:
            results = json.loads(results_path.read_text())
        except (OSError, ValueError):
            results = {}
        if results.get("run_key") != run_key:
            if results:
                print(f"{results_path}: settings or encoder changed; starting afresh",
                      file=sys.stderr)
            results = {}
    results.update({
        "run_key": run_key,
        "config": flatten(config_to_dict(e)),
        "uncertain": uncertain,
        "splits_csv": str(splits_csv),
        "level": "image" if not e.study_level else f"study-{e.study_level}",
        "observations": observations,
        "encoder": info,
        "sizes": {"pool": len(parts["pool"]), "select": len(parts["select"]),
                  "test": len(parts["test"]), "splits": [len(s) for s in splits]},
        **parts.describe(table),
        "pretraining": pretraining,
    })
    write_config(cfg, out_dir / "config.yaml")
    write_json_atomic(results_path, results, _json_default)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    if e.linear and "linear" not in results:
        results["linear"] = _linear(cfg, backbone, encoder_hash, data, splits, parts, test,
                                    out_dir, device, progress)
        write_json_atomic(results_path, results, _json_default)
        _report_kind(report, results["linear"], "linear")

    if e.e2e:
        entry = results.setdefault("e2e", {obs: {"per_split": []} for obs in observations})
        for i, rows in enumerate(splits):
            if all(any(r["split"] == i for r in entry[obs]["per_split"]) for obs in observations):
                continue  # done in an earlier run
            scores, meta = _finetune_split(cfg, checkpoint, baseline, backbone, dim, data,
                                           i, rows, parts, out_dir, progress, finetune_runner)
            _save_npz(out_dir / "scores" / f"e2e_split{i}.npz", scores=scores,
                      rows=parts["test"], labels=test.labels, mask=test.mask,
                      studies=test.studies.astype(str))
            for o, obs in enumerate(observations):
                row = {"split": i, **test.score(scores[:, o], o, e.bootstrap, e.split_seed + i),
                       "best_epoch": meta["best_epoch"], "select_auc": meta["select_auc"][o]}
                entry[obs]["per_split"] = [r for r in entry[obs]["per_split"] if r["split"] != i]
                entry[obs]["per_split"].append(row)
                _summarised(entry[obs])
                if report is not None:
                    report({"kind": "e2e", "observation": obs, **row})
            write_json_atomic(results_path, results, _json_default)

    if e.roc_plot:
        from medaug.eval.plots import plot_roc

        plot_roc(out_dir, out_dir / "roc.png", level=e.study_level)
    if module_hash(backbone) != encoder_hash:
        raise RuntimeError("the evaluated encoder's weights changed during evaluation")
    results["roc_png"] = str(out_dir / "roc.png") if e.roc_plot else None
    write_json_atomic(results_path, results, _json_default)
    return results


def _report_kind(report, entry: dict[str, Any], kind: str) -> None:
    if report is None:
        return
    for obs, item in entry.items():
        for row in item["per_split"]:
            report({"kind": kind, "observation": obs, **row})


def _linear(cfg, backbone, encoder_hash, data, splits, parts, test, out_dir, device, progress):
    """Features once for every row involved, then all heads at once."""
    from medaug.eval.features import cached_features, module_hash
    from medaug.eval.linear_probe import train_linear_probes

    e = cfg.eval
    observations = list(e.observations)
    rows = np.unique(np.concatenate([*splits, parts["select"], parts["test"]]))  # F sorted
    cache_dir = Path(e.feature_cache_dir) if e.feature_cache_dir else out_dir / "features"
    feats = cached_features(
        backbone, data.cache, rows, data.image_size, cache_dir, encoder_hash=encoder_hash,
        extra_key=str(Path(data.cache_dir).resolve()), batch_size=e.feature_batch_size,
        device=device, amp=e.amp, progress=progress, views=data.view,
    )  # F x D
    labels, mask = _labels(data.table, rows, observations, cfg.data.uncertain)  # F x O
    probe = train_linear_probes(
        feats, labels, mask,
        split_index=[np.searchsorted(rows, s) for s in splits],
        select_index=np.searchsorted(rows, parts["select"]),
        test_index=np.searchsorted(rows, parts["test"]),
        lr=e.linear_lr, batch_size=e.linear_batch_size, epochs=e.linear_epochs,
        weight_decay=e.linear_weight_decay, seed=cfg.seed, device=device, progress=progress,
    )
    # moco's sanity check: a linear probe must leave the encoder (and its BN statistics) as is.
    if module_hash(backbone) != encoder_hash:
        raise RuntimeError("the encoder changed during the linear probe")
    _save_npz(out_dir / "scores" / "linear.npz", scores=probe.test_scores, rows=parts["test"],
              labels=test.labels, mask=test.mask, best_epoch=probe.best_epoch,
              studies=test.studies.astype(str))
    entry = {}
    for o, obs in enumerate(observations):
        per_split = []
        for i in range(len(splits)):
            sel = probe.select_auc[i, o]
            per_split.append({
                "split": i,
                **test.score(probe.test_scores[i, :, o], o, e.bootstrap, e.split_seed + i),
                "best_epoch": int(probe.best_epoch[i, o]),
                "select_auc": None if not np.isfinite(sel) else float(sel),
            })
        entry[obs] = _summarised({"per_split": per_split})
    return entry


def _finetune_split(cfg, checkpoint, baseline, backbone, dim, data, i, rows, parts, out_dir,
                    progress, runner):
    """Fine-tune one split, in this process or through ``runner``; (N_test x O, meta)."""
    from medaug.eval.finetune import FinetuneData, finetune, finetune_settings

    observations = list(cfg.eval.observations)
    y, m = _labels(data.table, rows, observations, cfg.data.uncertain)
    ys, ms = _labels(data.table, parts["select"], observations, cfg.data.uncertain)
    fdata = FinetuneData(data.cache, rows, y, m, parts["select"], ys, ms, parts["test"],
                         views=data.view)
    settings = finetune_settings(cfg, data.image_size, i)
    state_path = out_dir / "e2e" / f"split{i}" / "state.pt"
    if runner is not None:
        out = runner(cfg, out_dir, i, checkpoint, baseline, fdata, settings, state_path,
                     progress=progress)
    else:
        out = finetune(backbone, dim, fdata, settings, state_path=state_path, progress=progress)
    return out["test_scores"], out
