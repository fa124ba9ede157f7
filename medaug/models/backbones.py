"""Backbones by name, shared by every pretraining method and by evaluation.

A backbone maps N x 3 x H x W images to N x D features, D known from its name without
running it (:func:`feature_dim`).  CNNs come from torchvision, Vision Transformers from
timm; all are built with random weights, and ImageNet initialisation reads a local file
(nothing is ever downloaded).  A ViT is built for the image size it will see
(``image_size``, a multiple of its patch), its classifier replaced by the CLS token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from medaug.errors import MedaugError


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone.

    Attributes:
        build: ``build(image_size) -> module`` with random weights, classifier still in place.
        classifier: name of the classifier attribute replaced by Identity (its weights are
            dropped from ImageNet files).
        dim: feature width D.
        patch: the ViT patch size (image sizes must divide by it), or None for CNNs.
    """

    build: Callable[[int], nn.Module]
    classifier: str
    dim: int
    patch: int | None = None


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(image_size: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _timm_vit(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(image_size: int) -> nn.Module:
        try:
            import timm
        except ImportError:
            raise MedaugError(
                f"backbone {name} needs the timm package (pip install timm)"
            ) from None
        # pretrained=False: timm never reaches the network; weights come from a local file.
        return timm.create_model(name, pretrained=False, img_size=image_size, **kwargs)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(_torchvision("resnet18"), "fc", 512),
    "resnet50": BackboneSpec(_torchvision("resnet50"), "fc", 2048),
    "densenet121": BackboneSpec(_torchvision("densenet121"), "classifier", 1024),
    # ViT-Ti/16 and ViT-S/16 (DeiT widths) serve CPU runs; ViT-B/16 is the paper-sized one.
    "vit_tiny": BackboneSpec(_timm_vit("vit_tiny_patch16_224"), "head", 192, patch=16),
    "vit_small": BackboneSpec(_timm_vit("vit_small_patch16_224"), "head", 384, patch=16),
    "vit_base": BackboneSpec(_timm_vit("vit_base_patch16_224"), "head", 768, patch=16),
}
INITS = ("random", "imagenet")


def list_archs() -> list[str]:
    """Names of the registered backbones."""
    return list(BACKBONES)


def check_arch(name: str, image_size: int | None = None) -> str:
    """Return ``name`` if it is a registered backbone (and ``image_size`` fits its patch),
    else raise a MedaugError listing the valid names."""
    if name not in BACKBONES:
        raise MedaugError(
            f"unknown backbone {name!r} (pretrain.arch); valid: {', '.join(BACKBONES)}"
        )
    patch = BACKBONES[name].patch
    if patch and image_size is not None and image_size % patch:
        raise MedaugError(
            f"backbone {name} cuts images into {patch} px patches: data.image_size "
            f"({image_size}) must be a multiple of {patch}"
        )
    return name


def feature_dim(name: str) -> int:
    """The feature width D of backbone ``name``."""
    return BACKBONES[check_arch(name)].dim


# Old DenseNet checkpoints name layers "norm.1"; torchvision modules call them "norm1".
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the user's to fix
        raise MedaugError(f"cannot read weights file {path}: {err}".splitlines()[0]) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise MedaugError(
            f"weights file {path} holds no state dict (expected a mapping of tensors, "
            "possibly under 'state_dict' or 'model')"
        )
    out = {}
    for key, value in obj.items():
        key = key.removeprefix("module.")  # saved from DataParallel/DDP
        key = _DENSENET_KEY.sub(r"\1\2", key)
        out[key] = value
    return out


def load_backbone_weights(model: nn.Module, path: str | Path, classifier: str) -> None:
    """Load a local torchvision-style state dict into ``model`` (``classifier.*`` keys dropped:
    the model's classifier is already an Identity).

    Raises:
        MedaugError: the file is missing or unreadable, or its keys/shapes do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise MedaugError(
            f"weights file {path} does not exist (pretrain.weights; weights are never downloaded)"
        )
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(f"{classifier}.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise MedaugError(
            f"weights file {path} does not fit {type(model).__name__}: {'; '.join(parts)}"
        )
    model.load_state_dict(state)


def build_backbone(
    arch: str = "resnet18", init: str = "random", weights: str | None = None,
    image_size: int = 224,
) -> tuple[nn.Module, int]:
    """A torchvision backbone returning N x D features (its classifier replaced by Identity).

    Args:
        arch: a name from :func:`list_archs`.
        init: "random" or "imagenet"; "imagenet" loads the local file ``weights`` (a plain
            state dict or a dict holding one under "state_dict"/"model"); nothing is ever
            downloaded.
        weights: path of the weights file for ``init="imagenet"``.
        image_size: the side of the images it will see (ViTs size their position table by it).

    Returns:
        The backbone (input N x 3 x H x W) and its feature dimension D.
    """
    spec = BACKBONES[check_arch(arch, image_size)]
    if init not in INITS:
        raise MedaugError(f"unknown init {init!r} (pretrain.init); valid: {', '.join(INITS)}")
    model = spec.build(image_size)
    classifier, dim = spec.classifier, spec.dim
    setattr(model, classifier, nn.Identity())
    if init == "imagenet":
        if not weights:
            raise MedaugError("init = imagenet needs a local weights file (pretrain.weights)")
        load_backbone_weights(model, weights, classifier)
    return model, dim


