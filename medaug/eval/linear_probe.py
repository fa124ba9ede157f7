"""Linear probes on cached features: every (split, observation) head trained at once.

All heads live in one weight tensor ``W: S x D x O`` (S splits, D features, O observations).
A step gathers one mini-batch per split (``S x B`` feature rows), computes all logits with one
einsum and applies Adam element-wise.  Heads never interact, so this equals training each
head alone with ``torch.optim.Adam`` -- with one care: a split whose epoch is shorter (fewer
images) or a batch without any usable label of an observation must not move that head, not
even by Adam's momentum, so the optimiser is written out with a per-head "active" mask and
per-head step counts.  Uncertain labels are masked out of the loss; model selection keeps,
per head, the epoch with the best selection-set AUC.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from medaug.errors import MedaugError

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class ProbeResult:
    """Trained heads and their scores.

    Attributes:
        weight: S x D x O best-epoch weights; bias: S x O.
        best_epoch: S x O epoch (0-based) kept by model selection.
        select_auc: S x O selection AUC of the kept epoch (NaN when undefined).
        history: E x S x O selection AUC per epoch.
        test_scores: S x N_test x O probabilities of the kept heads (None without test rows).
    """

    weight: np.ndarray
    bias: np.ndarray
    best_epoch: np.ndarray
    select_auc: np.ndarray
    history: np.ndarray
    test_scores: np.ndarray | None


def init_head(seed: int, split_id: int, dim: int, n_obs: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial weights (D x O) and bias (O) of one split's heads: U(-1/sqrt(D), 1/sqrt(D)),
    the range of ``nn.Linear``'s default, from a generator seeded by (seed, split)."""
    rng = np.random.default_rng([seed, split_id, 1])
    bound = 1.0 / math.sqrt(dim)
    wb = rng.uniform(-bound, bound, size=(dim + 1, n_obs)).astype(np.float32)
    return wb[:dim], wb[dim]


def epoch_order(seed: int, split_id: int, epoch: int, n: int) -> np.ndarray:
    """Shuffled order of a split's ``n`` training items in one epoch."""
    return np.random.default_rng([seed, split_id, epoch, 2]).permutation(n)


def _batched_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` (R x N) against ``labels`` (N); NaN if a class is absent."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[0], np.nan)
    ranks = average_ranks(scores)  # R x N, ties averaged
    return (ranks[:, labels == 1].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N along the last axis of an R x N array, ties sharing their mean rank."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=-1)
    pos = np.broadcast_to(np.arange(n), x.shape)
    starts = np.ones(x.shape, dtype=bool)  # first position of each run of equal values
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(x.shape, dtype=bool)  # last position of each run
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, pos, n - 1), -1), axis=-1), -1)
    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def train_linear_probes(
    feats: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    split_index: Sequence[np.ndarray],
    select_index: np.ndarray,
    test_index: np.ndarray | None = None,
    lr: float = 3e-5,
    batch_size: int = 16,
    epochs: int = 95,
    weight_decay: float = 0.0,
    seed: int = 0,
    split_ids: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Train a logistic-regression head per (split, observation) on frozen features.

    Args:
        feats: F x D features of every row involved (splits, selection, test).
        labels: F x O 0/1 labels; mask: F x O bool, False = left out of loss and AUC.
        split_index: S arrays of positions into ``feats``: each split's training rows.
        select_index: positions of the selection rows (model selection per epoch).
        test_index: positions of the test rows to score with the kept heads.
        lr, batch_size, epochs, weight_decay: Adam settings (paper: 3e-5, 16, 95, 0).
        seed: seeds initialisation and shuffling; ``split_ids`` (default 0..S-1) names each
            split in those seeds, so a split trained alone reproduces its batched result.

    Returns:
        :class:`ProbeResult`.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    feats = np.asarray(feats, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if labels.ndim == 1:
        labels, mask = labels[:, None], mask[:, None]
    n_rows, dim = feats.shape
    n_obs = labels.shape[1]
    n_splits = len(split_index)
    split_ids = list(range(n_splits)) if split_ids is None else list(split_ids)
    if len(split_ids) != n_splits:
        raise MedaugError(f"{n_splits} splits but {len(split_ids)} split ids")
    if n_splits == 0 or epochs < 1 or batch_size < 1:
        raise MedaugError("the linear probe needs at least one split, epoch and batch item")
    sizes = [len(ix) for ix in split_index]
    if min(sizes) == 0:
        raise MedaugError("a label split is empty")

    x_all = torch.from_numpy(feats).to(device)  # F x D
    y_all = torch.from_numpy(labels).to(device)  # F x O
    m_all = torch.from_numpy(mask.astype(np.float32)).to(device)  # F x O

    inits = [init_head(seed, sid, dim, n_obs) for sid in split_ids]
    w = torch.from_numpy(np.stack([i[0] for i in inits])).to(device)  # S x D x O
    b = torch.from_numpy(np.stack([i[1] for i in inits])).to(device)  # S x O
    m_w, v_w = torch.zeros_like(w), torch.zeros_like(w)
    m_b, v_b = torch.zeros_like(b), torch.zeros_like(b)
    steps = torch.zeros(n_splits, n_obs, device=device)  # Adam step count per head
    beta1, beta2 = ADAM_BETAS

    sel = np.asarray(select_index, dtype=np.int64)
    x_sel = x_all[torch.from_numpy(sel).to(device)]  # N_sel x D
    y_sel, m_sel = labels[sel], mask[sel]  # N_sel x O
    best_w, best_b = w.clone(), b.clone()
    best_score = np.full((n_splits, n_obs), -np.inf)
    best_epoch = np.zeros((n_splits, n_obs), dtype=np.int64)
    best_auc = np.full((n_splits, n_obs), np.nan)
    history = np.full((epochs, n_splits, n_obs), np.nan)

    n_steps = max(math.ceil(n / batch_size) for n in sizes)
    index = [np.asarray(ix, dtype=np.int64) for ix in split_index]
    for epoch in tqdm(range(epochs), desc="linear probe", file=sys.stderr,
                      disable=not progress, leave=False):
        # Batch plan for the epoch: S x T x B positions, padded where a split runs out.
        plan = np.zeros((n_splits, n_steps * batch_size), dtype=np.int64)
        valid = np.zeros((n_splits, n_steps * batch_size), dtype=np.float32)
        for s, ix in enumerate(index):
            plan[s, : len(ix)] = ix[epoch_order(seed, split_ids[s], epoch, len(ix))]
            valid[s, : len(ix)] = 1.0
        plan_t = torch.from_numpy(plan).to(device).view(n_splits, n_steps, batch_size)
        valid_t = torch.from_numpy(valid).to(device).view(n_splits, n_steps, batch_size)
        with torch.no_grad():
            for t in range(n_steps):
                idx = plan_t[:, t]  # S x B
                x = x_all[idx]  # S x B x D
                y = y_all[idx]  # S x B x O
                m = m_all[idx] * valid_t[:, t, :, None]  # S x B x O usable labels
                count = m.sum(dim=1)  # S x O
                active = count > 0  # S x O heads that take a step
                logits = torch.einsum("sbd,sdo->sbo", x, w) + b[:, None, :]  # S x B x O
                # d(mean BCE)/d(logit) = (sigmoid - y) / count over the usable labels.
                dlogit = (torch.sigmoid(logits) - y) * m / count.clamp(min=1)[:, None, :]
                g_w = torch.einsum("sbd,sbo->sdo", x, dlogit) + weight_decay * w  # S x D x O
                g_b = dlogit.sum(dim=1) + weight_decay * b  # S x O
                steps += active.float()
                a_w = active[:, None, :]  # S x 1 x O
                m_w = torch.where(a_w, beta1 * m_w + (1 - beta1) * g_w, m_w)
                v_w = torch.where(a_w, beta2 * v_w + (1 - beta2) * g_w * g_w, v_w)
                m_b = torch.where(active, beta1 * m_b + (1 - beta1) * g_b, m_b)
                v_b = torch.where(active, beta2 * v_b + (1 - beta2) * g_b * g_b, v_b)
                s_safe = steps.clamp(min=1)
                bc1 = 1 - beta1**s_safe  # S x O
                bc2_sqrt = torch.sqrt(1 - beta2**s_safe)  # S x O
                step_size = lr / bc1
                upd_w = step_size[:, None, :] * m_w / (v_w.sqrt() / bc2_sqrt[:, None, :] + ADAM_EPS)
                upd_b = step_size * m_b / (v_b.sqrt() / bc2_sqrt + ADAM_EPS)
                w = torch.where(a_w, w - upd_w, w)
                b = torch.where(active, b - upd_b, b)

            sel_logits = torch.einsum("nd,sdo->sno", x_sel, w) + b[:, None, :]  # S x N x O
            sel_logits = sel_logits.cpu().numpy()
        for o in range(n_obs):
            keep = m_sel[:, o]
            aucs = _batched_auc(y_sel[keep, o], sel_logits[:, keep, o])  # S
            history[epoch, :, o] = aucs
            if np.isfinite(aucs).all():
                score = aucs
            else:
                # One class absent from the selection set: fall back to the lowest loss.
                z, yy = sel_logits[:, keep, o], y_sel[keep, o]
                bce = np.logaddexp(0, z) - yy * z  # S x N
                score = -bce.mean(axis=1) if keep.any() else np.zeros(n_splits)
            better = score > best_score[:, o]  # strict: ties keep the earlier epoch
            best_score[better, o] = score[better]
            best_auc[better, o] = aucs[better]
            best_epoch[better, o] = epoch
            better_t = torch.from_numpy(better).to(device)
            best_w[:, :, o] = torch.where(better_t[:, None], w[:, :, o], best_w[:, :, o])
            best_b[:, o] = torch.where(better_t, b[:, o], best_b[:, o])

    test_scores = None
    if test_index is not None:
        x_test = x_all[torch.from_numpy(np.asarray(test_index, dtype=np.int64)).to(device)]
        with torch.no_grad():
            logits = torch.einsum("nd,sdo->sno", x_test, best_w) + best_b[:, None, :]
            test_scores = torch.sigmoid(logits).cpu().numpy()  # S x N_test x O
    return ProbeResult(
        weight=best_w.cpu().numpy(),
        bias=best_b.cpu().numpy(),
        best_epoch=best_epoch,
        select_auc=best_auc,
        history=history,
        test_scores=test_scores,
    )
