"""Pretraining checkpoints on disk: atomic writes, the ``latest`` pointer, retention, the best.

Layout of a run folder::

    OUT/checkpoints/epoch_0003/state.pt   # everything needed to continue exactly
    OUT/checkpoints/epoch_0003/meta.json  # epoch and metrics, readable without torch
    OUT/checkpoints/latest                # text: the newest epoch folder's name
    OUT/checkpoints/best/                 # a copy (hard link) of the best epoch's checkpoint
    OUT/best.json                         # the best epoch, its kNN AUC and where it is

A folder is written under a temporary name and renamed into place, so a crash leaves either
the old checkpoint or the new one, never half of one.  ``state.pt`` holds only tensors and
plain Python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medaug.errors import MedaugError
from medaug.files import write_json_atomic

CHECKPOINTS = "checkpoints"
STATE = "state.pt"
META = "meta.json"
LATEST = "latest"
BEST = "best"
BEST_JSON = "best.json"


def epoch_dir_name(epoch: int) -> str:
    """``epoch_0003`` for the checkpoint taken after 3 completed epochs."""
    return f"epoch_{int(epoch):04d}"


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS




def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one."""
    if final.exists():
        # rename() cannot replace a non-empty folder: move the old one aside first, so at
        # every moment one complete folder carries the name or its ".old" twin does.
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_checkpoint_dir(
    folder: str | Path, state: dict[str, Any], meta: dict[str, Any], link_from: Path | None = None
) -> Path:
    """Write ``state`` (torch.save) and ``meta`` (JSON) into ``folder`` atomically.

    Args:
        folder: the final checkpoint folder.
        state: the training state (tensors and plain values).
        meta: small JSON-able description (epoch, metrics).
        link_from: an existing checkpoint folder holding the same state: its ``state.pt`` is
            hard-linked instead of written again (copied when linking is impossible).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if link_from is not None and (Path(link_from) / STATE).exists():
        try:
            os.link(Path(link_from) / STATE, tmp / STATE)
        except OSError:
            shutil.copy2(Path(link_from) / STATE, tmp / STATE)
    else:
        torch.save(state, tmp / STATE)
    write_json_atomic(tmp / META, meta)
    _replace_dir(tmp, folder)
    return folder


def write_checkpoint(
    out_dir: str | Path,
    epoch: int,
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Save the checkpoint after ``epoch`` completed epochs, point ``latest`` at it, prune.

    Only the ``keep`` newest epoch folders stay (the best one lives in its own folder).

    Returns:
        the checkpoint folder ``OUT/checkpoints/epoch_XXXX``.
    """
    root = checkpoints_dir(out_dir)
    folder = write_checkpoint_dir(root / epoch_dir_name(epoch), state, meta)
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(folder.name + "\n")
    os.replace(tmp, root / LATEST)
    epochs = sorted(p for p in root.glob("epoch_[0-9]*") if p.is_dir() and p.name[6:].isdigit())
    for old in epochs[: max(len(epochs) - max(int(keep), 1), 0)]:
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def write_best(
    out_dir: str | Path, state: dict[str, Any], meta: dict[str, Any], link_from: Path | None = None
) -> Path:
    """Save the best checkpoint as ``OUT/checkpoints/best`` and describe it in ``OUT/best.json``."""
    folder = write_checkpoint_dir(checkpoints_dir(out_dir) / BEST, state, meta, link_from)
    write_json_atomic(Path(out_dir) / BEST_JSON, {**meta, "checkpoint": str(folder)})
    return folder


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete epoch checkpoint of a run folder, or None."""
    root = checkpoints_dir(out_dir)
    pointer = root / LATEST
    if pointer.exists():
        folder = root / pointer.read_text().strip()
        if (folder / STATE).exists():
            return folder
    # The pointer is missing or stale (e.g. a crash between the rename and its update):
    # fall back to the highest-numbered complete folder.
    done = sorted(
        p for p in root.glob("epoch_[0-9]*") if p.name[6:].isdigit() and (p / STATE).exists()
    )
    return done[-1] if done else None


def best_checkpoint(out_dir: str | Path) -> Path:
    """The checkpoint chosen by the kNN monitor, else the latest one.

    Raises:
        MedaugError: the folder holds no checkpoint.
    """
    best = checkpoints_dir(out_dir) / BEST
    if (best / STATE).exists():
        return best
    latest = latest_checkpoint(out_dir)
    if latest is None:
        raise MedaugError(f"{out_dir} holds no pretraining checkpoint (no {CHECKPOINTS}/*/{STATE})")
    return latest


def checkpoint_epoch(folder: str | Path) -> int:
    """Completed epochs recorded in a checkpoint folder's ``meta.json`` (-1 if unreadable)."""
    try:
        return int(json.loads((Path(folder) / META).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _state_file(path: str | Path) -> Path:
    """``state.pt`` of a state file, a checkpoint folder or a run folder (its best)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / STATE).exists():
        return path / STATE
    if path.is_dir() and (path / CHECKPOINTS).is_dir():
        return best_checkpoint(path) / STATE
    raise MedaugError(
        f"{path} is not a pretraining checkpoint (expected a run folder, a checkpoint folder "
        f"or a {STATE} file)"
    )


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the training state saved by :func:`write_checkpoint` (tensors only, no pickles)."""
    file = _state_file(path)
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file is a user problem, not a bug
        raise MedaugError(f"cannot read checkpoint {file}: {err}".splitlines()[0]) from None


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained backbone of a checkpoint, for evaluation.

    Every checkpoint holds the evaluated encoder's weights under one key (``backbone``),
    whatever the method; checkpoints from before methods were pluggable hold a MoCo model
    only, and their query backbone is read from it.

    Args:
        path: a run folder (its best checkpoint is used), a checkpoint folder or a state file.

    Returns:
        (backbone, config): the encoder on CPU in eval mode (N x 3 x S x S images -> N x D
        features; CNNs with ordinary BatchNorm, whatever pretraining used), and the saved
        config as a nested dict (``medaug.config.build_config`` rebuilds a Config).
    """
    from medaug.config import build_config
    from medaug.methods import get_method

    state = load_state(path)
    saved = state["config"]
    if "backbone" in state:
        cfg = build_config(saved)
        # Random init: the weights come from the checkpoint (no ImageNet file is needed).
        backbone = get_method(cfg.pretrain.method).backbone_from_config(cfg)
        backbone.load_state_dict(state["backbone"])
    else:
        from medaug.moco.model import extract_backbone_state
        from medaug.models.backbones import build_backbone

        backbone, _ = build_backbone(saved["pretrain"]["arch"], "random", None,
                                     saved["data"]["image_size"])
        backbone.load_state_dict(extract_backbone_state(state["model"]))
    backbone.eval()
    return backbone, saved


# --- random number generator states ----------------------------------------------------------


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The states of the global RNGs (python, numpy, torch, CUDA) and of named generators.

    Values are tensors and plain Python types, so the result survives ``weights_only`` loads.
    """
    # The legacy global generator is captured on purpose: code outside ours may draw from it.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return out


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back the states captured by :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
