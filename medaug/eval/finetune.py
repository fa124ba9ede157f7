"""End-to-end fine-tuning of one label split: all weights train, selection picks the epoch.

A plain function (no Ray): the Ray Train adapter in ``medaug.tune.finetune_trainer`` calls
it on each worker with ``rank`` / ``world_size`` and a ``wrap_model`` that adds DDP.  The
global batch is sharded across workers; the epoch order depends only on (seed, epoch), and
the augmentation generator is reseeded from (seed, epoch, rank), and model, optimiser and
best-so-far weights are saved after every epoch, so a killed run resumes where it stopped
and draws the same batches and views.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medaug.errors import MedaugError
from medaug.eval.features import encode, view_codes


class Classifier(nn.Module):
    """A backbone (N x 3 x R x R -> N x D) followed by one linear logit per observation.

    ``view`` (N view codes) goes to a backbone that takes them (``takes_view``)."""

    def __init__(self, backbone: nn.Module, dim: int, n_obs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, n_obs)

    def forward(self, x: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(encode(self.backbone, x, view))  # N x O logits


@dataclass
class FinetuneData:
    """Images and labels of one split's fine-tune.

    Attributes:
        images: uint8 array-like N_all x S x S indexable by int arrays (the image cache).
        train_rows, select_rows, test_rows: positions into ``images``.
        train_labels, select_labels: n x O 0/1 float arrays; train_mask, select_mask: n x O
            bool (False = uncertain, left out of loss and AUC).
        views: N_all int view codes aligned with ``images`` (``PreparedData.view``), for a
            backbone that takes them (``takes_view``); None for any other.
    """

    images: Any
    train_rows: np.ndarray
    train_labels: np.ndarray
    train_mask: np.ndarray
    select_rows: np.ndarray
    select_labels: np.ndarray
    select_mask: np.ndarray
    test_rows: np.ndarray
    views: Any = None


@dataclass
class FinetuneSettings:
    """Optimisation settings (paper: Adam, lr 3e-5, batch 16, 95 epochs)."""

    out_size: int
    lr: float = 3e-5
    batch_size: int = 16  # global, sharded across workers
    epochs: int = 95
    weight_decay: float = 0.0
    seed: int = 0
    hflip: float = 0.5
    rotation: float = 10.0
    crop_scale: float | None = None
    amp: bool = True
    eval_batch_size: int = 64
    max_steps_per_epoch: int | None = None


def _masked_bce(logits: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the usable labels (m: N x O, 0/1); zero (with a graph) when none."""
    per = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")  # N x O
    return (per * m).sum() / m.sum().clamp(min=1)


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: Any,
    rows: np.ndarray,
    out_size: int,
    batch_size: int,
    device: torch.device,
    amp: bool,
    views: Any = None,
) -> np.ndarray:
    """Sigmoid scores of ``model`` (a :class:`Classifier`) on ``images[rows]`` in eval mode:
    len(rows) x O; ``views`` as in :class:`FinetuneData`."""
    from medaug.data.augment import eval_transform

    was = model.training
    model.eval()
    rows = np.asarray(rows, dtype=np.int64)
    codes = view_codes(model.backbone, views, rows)  # len(rows), or None
    out = []
    for start in range(0, len(rows), batch_size):
        batch = torch.from_numpy(np.asarray(images[rows[start : start + batch_size]]))
        x = eval_transform(batch.to(device), out_size)  # B x 3 x R x R
        view = None if codes is None else torch.from_numpy(codes[start : start + batch_size]).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(x, view)  # B x O
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def selection_score(labels: np.ndarray, mask: np.ndarray, scores: np.ndarray) -> tuple[float, list]:
    """Model-selection criterion: mean selection AUC over observations; where an observation's
    AUC is undefined (one class absent), minus its mean BCE stands in.

    Returns:
        (score, per-observation AUCs with None where undefined).
    """
    from medaug.eval.metrics import auc

    values, aucs = [], []
    for o in range(labels.shape[1]):
        keep = mask[:, o]
        y, s = labels[keep, o], scores[keep, o]
        if keep.any() and 0 < y.sum() < len(y):
            a = auc(y, s)
            aucs.append(a)
            values.append(a)
        else:
            aucs.append(None)
            p = np.clip(s, 1e-7, 1 - 1e-7)
            values.append(-float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))) if len(y) else 0.0)
    return float(np.mean(values)), aucs


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def finetune(
    backbone: nn.Module,
    dim: int,
    data: FinetuneData,
    settings: FinetuneSettings,
    state_path: str | Path | None = None,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    report: Callable[[dict[str, Any], Path | None], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` plus a linear head end to end on one label split.

    Args:
        backbone: N x 3 x R x R -> N x D (copied; the caller's module is not modified); one
            that takes view codes (``takes_view``) gets ``data.views`` of its images.
        dim: feature dimension D.
        data: images, rows and labels (:class:`FinetuneData`).
        settings: :class:`FinetuneSettings`.
        state_path: resume file; loaded when present, rewritten (atomically, by rank 0)
            after every epoch.
        rank, world_size: this worker's place in data-parallel training; each global batch
            is split across the workers.
        wrap_model: e.g. DDP wrapping (Ray's ``prepare_model``); applied after loading.
        report: ``report(metrics, state_path)`` after every epoch (all ranks call it).

    Returns:
        {"test_scores": N_test x O array (rank 0; None elsewhere), "best_epoch": int,
        "select_auc": per-observation AUC of the kept epoch, "history": per-epoch metrics}.
    """
    from medaug.data.augment import augment

    s = settings
    if s.batch_size % world_size:
        raise MedaugError(
            f"eval.e2e_batch_size ({s.batch_size}) must be divisible by the number of "
            f"workers ({world_size})"
        )
    if len(data.train_rows) == 0:
        raise MedaugError("the label split to fine-tune on is empty")
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    n_obs = data.train_labels.shape[1]
    torch.manual_seed(s.seed)  # head initialisation
    model = Classifier(copy.deepcopy(backbone), dim, n_obs).to(device)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    use_amp = s.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator(device=device)

    start_epoch, best_score, best_epoch = 0, -math.inf, -1
    best_state: dict[str, torch.Tensor] | None = None
    best_aucs: list = []
    history: list[dict[str, Any]] = []
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"]) + 1
        best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
        best_state, best_aucs = state["best_model"], list(state["best_aucs"])
        history = list(state["history"])
    net = wrap_model(model) if wrap_model is not None else model

    y_all = torch.from_numpy(np.array(data.train_labels, dtype=np.float32))  # n x O
    m_all = torch.from_numpy(np.array(data.train_mask, dtype=np.float32))  # n x O
    codes = view_codes(model.backbone, data.views, data.train_rows)  # n, or None
    train_views = None if codes is None else torch.from_numpy(codes)  # n
    n = len(data.train_rows)
    n_steps = math.ceil(n / s.batch_size)
    if s.max_steps_per_epoch:
        n_steps = min(n_steps, s.max_steps_per_epoch)
    per_rank = s.batch_size // world_size
    for epoch in tqdm(range(start_epoch, s.epochs), desc="fine-tune", file=sys.stderr,
                      disable=not progress or rank != 0, leave=False,
                      initial=start_epoch, total=s.epochs):
        order = np.random.default_rng([s.seed, epoch]).permutation(n)
        # Views seeded per (seed, epoch, rank): a resumed epoch draws exactly the same ones.
        gen.manual_seed(int(np.random.SeedSequence([s.seed, epoch, rank]).generate_state(1)[0]))
        net.train()
        losses = []
        for t in range(n_steps):
            batch = order[t * s.batch_size : (t + 1) * s.batch_size]
            mine = batch[rank * per_rank : (rank + 1) * per_rank]
            weight = 1.0
            if len(mine) == 0:
                # A short last batch left this worker nothing: it still steps (DDP needs every
                # worker in the all-reduce) on one item with zero weight.
                mine, weight = batch[:1], 0.0
            imgs = torch.from_numpy(np.asarray(data.images[data.train_rows[mine]])).to(device)
            x = augment(imgs, gen, s.out_size, hflip=s.hflip, rotation=s.rotation,
                        crop_scale=s.crop_scale)  # b x 3 x R x R
            y = y_all[mine].to(device)  # b x O
            m = m_all[mine].to(device) * weight  # b x O
            view = None if train_views is None else train_views[mine].to(device)  # b
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x, view)  # b x O
            loss = _masked_bce(logits, y, m)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            losses.append(float(loss.detach()))

        sel_scores = predict(model, data.images, data.select_rows, s.out_size,
                             s.eval_batch_size, device, s.amp, data.views)
        score, aucs = selection_score(np.asarray(data.select_labels),
                                      np.asarray(data.select_mask, bool), sel_scores)
        if score > best_score:
            best_score, best_epoch, best_state, best_aucs = score, epoch, _cpu_state(model), aucs
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else math.nan,
                   "select_score": score, "select_auc": aucs, "best_epoch": best_epoch}
        history.append(metrics)
        if state_path is not None and rank == 0:
            _save_state(state_path, {
                "model": _cpu_state(model),
                "optimiser": optimiser.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "best_model": best_state,
                "best_aucs": best_aucs,
                "history": history,
            })
        if report is not None:
            report(metrics, state_path if rank == 0 else None)

    if best_state is None:  # zero epochs asked for: the starting weights are the model
        best_state = _cpu_state(model)
    test_scores = None
    if rank == 0:
        model.load_state_dict(best_state)
        test_scores = predict(model, data.images, np.asarray(data.test_rows), s.out_size,
                              s.eval_batch_size, device, s.amp, data.views)
    return {"test_scores": test_scores, "best_epoch": best_epoch, "select_auc": best_aucs,
            "history": history}


def finetune_settings(cfg: Any, out_size: int, split: int) -> FinetuneSettings:
    """:class:`FinetuneSettings` from ``cfg.eval`` for one split (its own seed)."""
    e = cfg.eval
    return FinetuneSettings(
        out_size=out_size,
        lr=e.e2e_lr,
        batch_size=e.e2e_batch_size,
        epochs=e.e2e_epochs,
        weight_decay=e.e2e_weight_decay,
        seed=cfg.seed * 1009 + split,
        hflip=e.e2e_hflip,
        rotation=e.e2e_rotation,
        crop_scale=e.e2e_crop_scale,
        amp=e.amp,
        eval_batch_size=e.feature_batch_size,
        max_steps_per_epoch=e.e2e_max_steps_per_epoch,
    )
