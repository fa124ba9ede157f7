"""Frozen-encoder features, computed once per checkpoint and cached on disk.

Every linear head of every split trains on the same features (dinov2's linear evaluation
shares one frozen forward pass across a grid of heads): the images involved in any split,
the selection set and the test set are encoded once, in eval mode (BatchNorm statistics
frozen), and stored as ``.npy`` keyed by the encoder's hash, the rows and the resolution.

A backbone whose class sets ``takes_view = True`` (the multi-view MAE's encoder) is called
as ``backbone(images, views)``: besides the N x 3 x S x S images it gets each image's view
code (0 frontal, 1 lateral, 2 other: ``PreparedData.view``), as in its pretraining, and the
cache key then holds those codes too.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

Transform = Callable[[torch.Tensor, int], torch.Tensor]


def module_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (parameter and buffer names, dtypes, shapes, values).

    Used as the feature-cache key and to check that a linear probe leaves the encoder
    untouched.
    """
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # Bytes through a uint8 view: works for every dtype numpy lacks (bfloat16).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def takes_view(backbone: nn.Module) -> bool:
    """Whether ``backbone`` wants each image's view code besides the image (its class sets
    ``takes_view = True``); DDP and similar wrappers are looked through."""
    inner = getattr(backbone, "module", backbone)
    return bool(getattr(inner, "takes_view", False) or getattr(backbone, "takes_view", False))


def view_codes(backbone: nn.Module, views: Any, rows: np.ndarray) -> np.ndarray | None:
    """The view codes of ``rows`` for a backbone that takes them (None for one that does not).

    Args:
        views: N_all int view codes aligned with the images (``PreparedData.view``), or None.

    Raises:
        ValueError: the backbone takes view codes and none were given.
    """
    if not takes_view(backbone):
        return None
    if views is None:
        raise ValueError(
            f"{type(backbone).__name__} takes each image's view code (takes_view): pass the "
            "view codes of the images (PreparedData.view)"
        )
    return np.asarray(views, dtype=np.int64)[np.asarray(rows, dtype=np.int64)]


def encode(backbone: nn.Module, x: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
    """``backbone(x, view)`` for a backbone that takes view codes, else ``backbone(x)``."""
    return backbone(x) if view is None else backbone(x, view)


def feature_key(encoder_hash: str, rows: np.ndarray, out_size: int, extra: str = "",
                views: np.ndarray | None = None) -> str:
    """Cache key of one feature matrix: encoder, row positions, resolution (and ``extra``,
    e.g. the identity of the image cache; and ``views``, the view codes of the rows when
    the encoder reads them)."""
    h = hashlib.sha256()
    h.update(encoder_hash.encode())
    h.update(np.ascontiguousarray(np.asarray(rows, dtype=np.int64)).tobytes())
    h.update(f"|{out_size}|{extra}".encode())
    if views is not None:
        h.update(b"|views|" + np.ascontiguousarray(np.asarray(views, dtype=np.int64)).tobytes())
    return h.hexdigest()[:24]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_transform() -> Transform:
    """The evaluation transform of pretraining (resize, 3 channels, normalise)."""
    from medaug.data.augment import eval_transform

    return eval_transform


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    images: Any,
    rows: np.ndarray,
    out_size: int,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    amp: bool = True,
    transform: Transform | None = None,
    progress: bool = True,
    views: Any = None,
) -> np.ndarray:
    """Encode ``images[rows]`` with a frozen backbone.

    Args:
        backbone: module mapping N x 3 x R x R to N x D (with ``takes_view``: images and N
            view codes to N x D); put in eval mode here (and restored).
        images: uint8 array-like N_all x S x S indexable by an int array (the image cache).
        rows: positions into ``images``.
        out_size: network input resolution R.
        amp: autocast to float16 on CUDA (ignored on CPU).
        transform: uint8 batch (N x S x S tensor) and R -> normalised N x 3 x R x R float.
        views: N_all int view codes aligned with ``images`` (``PreparedData.view``); needed
            by a backbone that takes them, ignored otherwise.

    Returns:
        len(rows) x D float32 array.
    """
    device = torch.device(device) if device is not None else default_device()
    transform = transform or default_transform()
    rows = np.asarray(rows, dtype=np.int64)
    codes = view_codes(backbone, views, rows)  # len(rows), or None
    was_training = backbone.training
    backbone.eval()
    backbone.to(device)
    out: list[np.ndarray] = []
    use_amp = amp and device.type == "cuda"
    try:
        for start in tqdm(
            range(0, len(rows), batch_size),
            desc="features",
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ):
            idx = rows[start : start + batch_size]
            # Sorted reads are faster on a memmap; undo the order afterwards.
            order = np.argsort(idx, kind="stable")
            batch = np.asarray(images[idx[order]])  # B x S x S uint8
            x = transform(torch.from_numpy(batch).to(device), out_size)  # B x 3 x R x R
            view = None
            if codes is not None:  # B, in the batch's (sorted) order
                view = torch.from_numpy(codes[start : start + batch_size][order]).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                f = encode(backbone, x, view)  # B x D
            f = f.float().cpu().numpy()
            unsorted = np.empty_like(f)
            unsorted[order] = f
            out.append(unsorted)
    finally:
        backbone.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def cached_features(
    backbone: nn.Module,
    images: Any,
    rows: np.ndarray,
    out_size: int,
    cache_dir: str | Path,
    encoder_hash: str | None = None,
    extra_key: str = "",
    **kwargs: Any,
) -> np.ndarray:
    """:func:`extract_features` through an on-disk cache.

    Args:
        encoder_hash: identity of the encoder (e.g. the checkpoint file's hash); default
            :func:`module_hash` of ``backbone``.
        extra_key: anything else the features depend on (the image cache's identity).
        kwargs: passed to :func:`extract_features` (``views`` among them: the view codes
            of the rows are part of the key when the backbone reads them).

    Returns:
        len(rows) x D float32 array (loaded from the cache when present).
    """
    encoder_hash = encoder_hash or module_hash(backbone)
    codes = view_codes(backbone, kwargs.get("views"), rows)
    key = feature_key(encoder_hash, rows, out_size, extra_key, views=codes)
    path = Path(cache_dir) / f"features-{key}.npy"
    if path.exists():
        feats = np.load(path)
        if feats.shape[0] == len(rows):
            return feats
    feats = extract_features(backbone, images, rows, out_size, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, feats)
    os.replace(tmp, path)
    return feats
