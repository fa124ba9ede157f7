"""Pretraining methods behind one seam, registered by name like the pair criteria.

The engine's loop (:func:`medaug.engine.pretrain.pretrain`) owns the pairs and their
sampling, the learning-rate schedule, the optimiser, mixed precision, the distributed
set-up, checkpoints with exact resume, the kNN monitor and the ``report`` callable.  A
method owns what is its own::

    method = get_method(cfg.pretrain.method)(cfg, data, device, generator)
    net = DDP(method.module) if distributed else method.module
    for each step:
        loss, stats = method.step(net, rows_a, rows_b)   # loss carries the gradient
        scaler.scale(loss).backward(); optimiser step
        method.after_step()                               # e.g. MoCo's enqueue
    checkpoint: method.module.state_dict(), method.extra_state(), method.eval_backbone()

``pretrain.method`` is a registered name (``moco``, ``mvmae``) or ``package.module:Class``
for a method that lives outside medaug: its module is imported where the job runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

from medaug.errors import MedaugError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from medaug.config import Config
    from medaug.engine.data import PreparedData


class Method:
    """One pretraining method: built from the config, one training step on a batch of
    (anchor rows, partner rows), its extra state, and the backbone evaluation uses.

    Subclasses set ``module`` (the trained ``nn.Module``: its parameters that require a
    gradient are optimised, it is wrapped in DDP when distributed) in ``__init__``.

    Attributes:
        name: the registry name (recorded in checkpoints).
        config_section: the name of the method's own config section, or None.
    """

    name: ClassVar[str] = ""
    config_section: ClassVar[str | None] = None

    def __init__(self, cfg: Config, data: PreparedData, device: torch.device,
                 generator: torch.Generator) -> None:
        self.cfg, self.data, self.device, self.generator = cfg, data, device, generator
        self.use_amp = bool(cfg.pretrain.amp and device.type == "cuda")
        self.module: torch.nn.Module

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Checks of the method's own settings, before any work (raise MedaugError)."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: by default every parameter of ``module`` that
        requires a gradient, with ``weight_decay``."""
        params = [q for q in self.module.parameters() if q.requires_grad]
        return [{"params": params, "weight_decay": weight_decay}]

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called before the first step of every epoch (0-based ``epoch`` of ``epochs``)."""

    def step(self, net: torch.nn.Module, rows_a: np.ndarray, rows_b: np.ndarray
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step on anchors ``rows_a`` paired with partners ``rows_b`` (B table
        rows each; a row paired with itself has no other view).

        ``net`` is ``self.module`` or its DDP wrapper: call it for the forward pass that
        needs gradient synchronisation.

        Returns:
            the loss (a scalar with gradient; the engine runs backward and the optimiser)
            and named scalar statistics: names starting with ``n_`` are counts summed over
            the epoch's steps and workers, the others are averaged.
        """
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after the optimiser step (MoCo enqueues its keys here)."""

    def extra_state(self) -> dict[str, Any]:
        """State besides ``module``'s weights that exact resume needs."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def eval_backbone(self) -> torch.nn.Module:
        """The encoder evaluation uses: N x 3 x H x W images -> N x D features."""
        raise NotImplementedError

    @classmethod
    def backbone_from_config(cls, cfg: Config) -> torch.nn.Module:
        """A freshly built module whose state dict is that of :meth:`eval_backbone`, for
        loading a checkpoint's backbone without the rest of the method."""
        raise NotImplementedError


_METHODS: dict[str, str | type[Method]] = {
    "moco": "medaug.moco.method:MocoMethod",
    "mvmae": "medaug.mvmae.method:MvmaeMethod",
}


def register_method(name: str, cls: type[Method] | str) -> None:
    """Add a method (a class, or ``"package.module:Class"`` imported on first use)."""
    _METHODS[name] = cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return list(_METHODS)


def _import(path: str) -> type[Method]:
    module, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise MedaugError(f"cannot load pretraining method {path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise MedaugError(f"pretraining method {path!r} is not a medaug.methods.Method")
    return cls


def check_method_name(name: str) -> str:
    """Check a method name without importing it (a registered name or ``module:Class``)."""
    if name in _METHODS or (":" in name and all(name.partition(":")[::2])):
        return name
    raise MedaugError(
        f"unknown pretraining method {name!r} (pretrain.method); valid: {', '.join(_METHODS)}, "
        "or package.module:Class"
    )


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (or at ``package.module:Class``)."""
    entry = _METHODS.get(check_method_name(name), name)
    return _import(entry) if isinstance(entry, str) else entry
