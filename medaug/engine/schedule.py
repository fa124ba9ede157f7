"""The optimiser and its learning-rate schedule, both chosen by name.

The schedule is precomputed as one array indexed by the global step (epoch x steps per epoch +
step), so the training loop stays flat and the schedule can be checked on its own.

>>> lrs = lr_schedule("step", 1e-4, epochs=20, steps_per_epoch=10, milestones=[12, 18])
>>> [round(float(lrs[i]), 9) for i in (119, 120, 180)]  # last step of epoch 11; epochs 12, 18
[0.0001, 1e-05, 1e-06]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from medaug.errors import MedaugError


def _step(base_lr, epochs, steps_per_epoch, milestones, gamma) -> np.ndarray:
    # MultiStepLR with 0-based epochs: "lr / 10 at epochs 12 and 18" means epochs 0-11 use the
    # base rate, 12-17 a tenth of it, 18 onwards a hundredth.
    epoch_of_step = np.arange(epochs * steps_per_epoch) // steps_per_epoch  # (E*S,)
    # Number of milestones already reached at each step.
    n_drops = np.searchsorted(np.sort(np.asarray(milestones, dtype=np.int64)), epoch_of_step, "right")
    return base_lr * np.power(float(gamma), n_drops)


def _cosine(base_lr, epochs, steps_per_epoch, milestones, gamma) -> np.ndarray:
    total = epochs * steps_per_epoch
    step = np.arange(total, dtype=np.float64)
    return base_lr * 0.5 * (1.0 + np.cos(math.pi * step / max(total, 1)))


def _constant(base_lr, epochs, steps_per_epoch, milestones, gamma) -> np.ndarray:
    return np.full(epochs * steps_per_epoch, base_lr, dtype=np.float64)


SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
    "step": _step,
    "cosine": _cosine,
    "constant": _constant,
}


def check_schedule(name: str) -> str:
    if name not in SCHEDULES:
        raise MedaugError(f"unknown lr schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return name


def lr_schedule(
    name: str,
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_epochs: int = 0,
) -> np.ndarray:
    """Learning rate of every optimiser step of a run.

    Args:
        name: a key of :data:`SCHEDULES` ("step": multiply by ``gamma`` at each milestone
            epoch; "cosine": half-cosine from ``base_lr`` to 0 over all steps; "constant").
        base_lr: the initial learning rate.
        epochs, steps_per_epoch: the run's length.
        milestones: 0-based epochs at which the step schedule decays.
        gamma: the step schedule's decay factor.
        warmup_epochs: the first ``warmup_epochs * steps_per_epoch`` steps rise linearly,
            step w of W at ``base_lr * (w + 1) / W``; the named schedule runs over the steps
            after them (so a cosine still ends at 0 and step milestones still count epochs
            from the start).

    Returns:
        float64 array of length ``epochs * steps_per_epoch``, indexed by the global step.
    """
    check_schedule(name)
    if epochs < 1 or steps_per_epoch < 1:
        raise MedaugError(
            f"lr schedule needs at least one epoch and one step (got {epochs} x {steps_per_epoch})"
        )
    if not 0 <= warmup_epochs < epochs:
        raise MedaugError(
            f"pretrain.warmup_epochs must lie in [0, epochs), got {warmup_epochs} of {epochs}"
        )
    lrs = SCHEDULES[name](float(base_lr), epochs, steps_per_epoch, list(milestones), gamma)
    warm = warmup_epochs * steps_per_epoch
    if warm:
        if name == "cosine":  # the half-cosine spans the steps after the warm-up
            lrs[warm:] = _cosine(float(base_lr), epochs - warmup_epochs, steps_per_epoch, [], gamma)
        lrs[:warm] = base_lr * (np.arange(warm) + 1.0) / warm
    return lrs


def _adam(params, lr, weight_decay, momentum):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(params, lr, weight_decay, momentum):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, lr, weight_decay, momentum):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
}


def check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        raise MedaugError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return name


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """An optimiser from :data:`OPTIMIZERS` (``momentum`` is used by SGD only)."""
    check_optimizer(name)
    return OPTIMIZERS[name](list(params), lr, weight_decay, momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Put ``lr`` into every parameter group (the schedule array owns the value)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
