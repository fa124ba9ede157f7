"""MoCo's key queue, with the metadata of the image each key was computed from.

The queue is a ring buffer of K keys.  Beside every key it keeps the laterality, patient,
study and table row of the image the KEY encoder saw (x', the positive partner), never the
anchor's: the laterality strategies compare a query with the images behind the keys, so
storing the anchor's metadata would mislabel every cross-laterality pair.  It also keeps
the key image's hard-negative group: its laterality by default, or the code of any other
grouping (``moco.hard_negatives_by``: projection, sex, age band, ...,
:mod:`medaug.data.groups`), which is what the laterality strategies compare.

All state lives in buffers, so ``state_dict()`` carries the queue across checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medaug.data.schema import VIEWS
from medaug.errors import MedaugError
from medaug.moco.model import concat_all_gather

# Laterality codes stored in the queue and passed as ``q_view`` to the loss.
VIEW_CODES: dict[str, int] = {name: code for code, name in enumerate(VIEWS)}  # frontal 0, ...
EMPTY = -1


def view_codes(views) -> Tensor:
    """Laterality names ("frontal", "lateral", "other") -> int8 codes (0, 1, 2)."""
    try:
        return torch.tensor([VIEW_CODES[v] for v in views], dtype=torch.int8)
    except KeyError as err:
        raise MedaugError(f"unknown view {err.args[0]!r}; valid: {', '.join(VIEW_CODES)}") from None


class KeyQueue(nn.Module):
    """Ring buffer of K unit keys plus per-slot metadata of the key images.

    Buffers:
        keys: K x C float, initialised to random unit vectors (MoCo's start).
        view: K int8 laterality code (0 frontal, 1 lateral, 2 other; -1 = never filled).
        patient, study, image: K int64 ids of the key image (-1 = never filled); ``image``
            is the row index in the metadata table.
        group: K int64 hard-negative group code of the key image (-1 = never filled); the
            laterality code unless another grouping is enqueued.
        ptr: scalar int64, the next slot to overwrite.

    Args:
        size: K, the number of slots; the (global) batch size must divide it.
        dim: C, the key dimension.
        generator: random source for the initial keys.
    """

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise MedaugError(f"queue size and dim must be positive, got {size} and {dim}")
        self.size = size
        self.dim = dim
        keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1)  # K x C
        self.register_buffer("keys", keys)
        self.register_buffer("view", torch.full((size,), EMPTY, dtype=torch.int8))
        self.register_buffer("patient", torch.full((size,), EMPTY, dtype=torch.int64))
        self.register_buffer("study", torch.full((size,), EMPTY, dtype=torch.int64))
        self.register_buffer("image", torch.full((size,), EMPTY, dtype=torch.int64))
        self.register_buffer("group", torch.full((size,), EMPTY, dtype=torch.int64))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"

    @property
    def n_filled(self) -> int:
        """Slots that hold a real key (the rest still hold the random initial keys)."""
        return int((self.view >= 0).sum())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A queue saved before it kept groups grouped its keys by laterality.
        if prefix + "group" not in state_dict and prefix + "view" in state_dict:
            state_dict[prefix + "group"] = state_dict[prefix + "view"].to(torch.int64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def enqueue(
        self,
        keys: Tensor,
        view: Tensor,
        patient: Tensor,
        study: Tensor,
        image: Tensor,
        group: Tensor | None = None,
        *,
        gather: bool = True,
    ) -> None:
        """Write a batch of keys and their images' metadata over the oldest slots.

        Args:
            keys: B x C unit keys of the key images x' (this worker's batch).
            view: B laterality codes of the key images (0, 1 or 2).
            patient, study, image: B int ids of the key images.
            group: B hard-negative group codes (>= 0) of the key images; default: ``view``.
            gather: when torch.distributed runs with several workers, first gather the
                batches of all workers (MoCo enqueues the global batch, identically on every
                worker); pass False when the arguments already hold the global batch.
        """
        group = view if group is None else group
        meta = {"view": view, "patient": patient, "study": study, "image": image, "group": group}
        if gather:
            keys = concat_all_gather(keys)
            meta = {name: concat_all_gather(x.to(keys.device)) for name, x in meta.items()}
        b = keys.shape[0]
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be B x {self.dim}, got {tuple(keys.shape)}")
        for name, x in meta.items():
            if x.shape != (b,):
                raise ValueError(f"{name} must hold {b} values, got shape {tuple(x.shape)}")
        if self.size % b:
            raise MedaugError(
                f"queue size {self.size} is not divisible by the global batch {b}: set "
                "moco.queue_size to a multiple of batch_size x num_workers (and drop the "
                "last incomplete batch)"
            )
        view = meta["view"]
        if b and (int(view.min()) < 0 or int(view.max()) >= len(VIEWS)):
            raise ValueError(f"view codes must lie in 0..{len(VIEWS) - 1}, got {view.tolist()}")
        if b and int(meta["group"].min()) < 0:
            raise ValueError(f"group codes must be >= 0, got {meta['group'].tolist()}")
        p = int(self.ptr)
        self.keys[p : p + b] = keys.to(self.keys.dtype)
        for name, x in meta.items():
            buffer = getattr(self, name)
            buffer[p : p + b] = x.to(buffer)
        self.ptr.fill_((p + b) % self.size)
