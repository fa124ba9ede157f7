"""MoCo v2 encoders: a torchvision backbone plus an MLP head, and its momentum twin.

The model returns unit vectors; the training loop owns the queue, the loss and the
optimiser.  One step of the loop looks like::

    model.momentum_update()
    q, k = model(x_q, x_k)        # or model.query(x_q), model.key(x_k)
    loss, stats = contrastive_loss(q, k, queue, q_group, ...)
    queue.enqueue(k, k_view, ..., group=k_group)

Batch-norm leak between a query and its key is prevented by shuffle-BN: across workers
when torch.distributed runs with several of them (MoCo's recipe), and within one worker by
batch-split BN (``bn_groups``) with the key batch shuffled across the groups.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from medaug.errors import MedaugError
from medaug.moco.bn import convert_plain_bn, convert_split_bn
from medaug.models.backbones import build_backbone


class ProjectionHead(nn.Sequential):
    """MoCo v2's MLP head: Linear(in_dim, hidden) - ReLU - Linear(hidden, out_dim).

    Input N x in_dim, output N x out_dim (not normalised).
    """

    def __init__(self, in_dim: int = 512, hidden: int = 512, out_dim: int = 128) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )


# ---------------------------------------------------------------------------------------------
# Free tensor functions.


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def concat_all_gather(t: Tensor) -> Tensor:
    """Concatenate ``t`` (B x ...) from all workers along dim 0 (W*B x ..., rank order).

    Identity when torch.distributed is not running or has a single worker.  No gradient
    flows through the gathered copies.
    """
    world = _world_size()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def momentum_update(q_model: nn.Module, k_model: nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter (buffers untouched)."""
    q_params = list(q_model.parameters())
    k_params = list(k_model.parameters())
    if len(q_params) != len(k_params):
        raise ValueError("query and key models have different parameter lists")
    torch._foreach_mul_(k_params, m)
    torch._foreach_add_(k_params, q_params, alpha=1.0 - m)


# ---------------------------------------------------------------------------------------------


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and the shuffle-BN that keeps them apart.

    Args:
        arch: backbone name (:func:`list_archs`).
        init: "random" or "imagenet" (see :func:`build_backbone`).
        weights: local weights file for ``init="imagenet"``.
        hidden: hidden width of the projection head (reference: 512).
        dim: output dimension C (reference: 128).
        momentum: key-encoder momentum m (reference: 0.999).
        bn_groups: BN groups per worker batch (1 = plain BN); batches must divide by it.
        image_size: the side of the training images (a ViT sizes its position table by it).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        init: str = "random",
        weights: str | None = None,
        hidden: int = 512,
        dim: int = 128,
        momentum: float = 0.999,
        bn_groups: int = 1,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise MedaugError(f"momentum must lie in [0, 1], got {momentum}")
        if bn_groups < 1:
            raise MedaugError(f"bn_groups must be at least 1, got {bn_groups}")
        backbone, feat_dim = build_backbone(arch, init, weights, image_size)
        backbone = convert_split_bn(backbone, bn_groups)
        self.encoder_q = nn.Sequential(
            OrderedDict(backbone=backbone, head=ProjectionHead(feat_dim, hidden, dim))
        )
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.momentum = momentum
        self.bn_groups = bn_groups
        self.feature_dim = feat_dim
        self.dim = dim

    @classmethod
    def from_config(cls, cfg) -> MoCo:
        """Build from a :class:`medaug.config.Config` (``pretrain``: the backbone; ``moco``:
        head, momentum, BN groups)."""
        p, m = cfg.pretrain, cfg.moco
        return cls(
            arch=p.arch,
            init=p.init,
            weights=p.weights,
            hidden=m.head_hidden,
            dim=m.head_dim,
            momentum=m.momentum,
            bn_groups=m.bn_groups,
            image_size=cfg.data.image_size,
        )

    def backbone(self) -> nn.Module:
        """The query encoder's backbone (N x 3 x H x W -> N x D), for evaluation.

        Its BN layers split training batches into ``bn_groups`` groups; in eval mode they
        are plain BatchNorm2d.  Its state dict loads into ``build_backbone(arch)[0]``.
        """
        return self.encoder_q.backbone

    def export_backbone(self) -> nn.Module:
        """A copy of the query backbone with plain BatchNorm2d layers (N x 3 x H x W -> N x D).

        Use this for end-to-end fine-tuning, where training-mode BN should see the whole
        batch rather than ``bn_groups`` groups.
        """
        return convert_plain_bn(copy.deepcopy(self.encoder_q.backbone))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """Move the key encoder towards the query encoder (call once per step, before key)."""
        momentum_update(self.encoder_q, self.encoder_k, self.momentum)

    def query(self, x: Tensor) -> Tensor:
        """N x 3 x H x W -> N x C unit query vectors (float32, with gradient)."""
        return F.normalize(self.encoder_q(x).float(), dim=1)

    @torch.no_grad()
    def key(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """N x 3 x H x W -> N x C unit keys (float32, no gradient), row i from image i.

        In training mode the batch is shuffled before the key encoder and unshuffled after,
        so image i is normalised with a different set of images than its query: across all
        workers when torch.distributed has several, else across this worker's BN groups.
        ``generator`` (on any device) makes the shuffle reproducible.  With one worker and
        ``bn_groups == 1`` there is nothing to shuffle across and BN can leak, as in MoCo on
        a single GPU.
        """
        if _world_size() > 1 and self.training:
            return self._key_distributed(x, generator)
        if not self.training or self.bn_groups == 1:  # nothing to shuffle across
            return F.normalize(self.encoder_k(x).float(), dim=1)
        n = x.shape[0]
        perm = _randperm(n, generator, x.device)  # N: shuffled position -> image
        k = self.encoder_k(x[perm]).float()  # N x C, row p = image perm[p]
        k = k[torch.argsort(perm)]  # N x C, row i = image i
        return F.normalize(k, dim=1)

    def _key_distributed(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """MoCo's shuffle-BN: gather all workers' key inputs, permute, compute, unshuffle."""
        b = x.shape[0]
        x_all = concat_all_gather(x)  # W*B x 3 x H x W
        total = x_all.shape[0]
        perm = _randperm(total, generator, x.device)
        dist.broadcast(perm, src=0)  # every worker uses rank 0's permutation
        rank = dist.get_rank()
        mine = perm[rank * b : (rank + 1) * b]  # B global image indices this worker encodes
        k = self.encoder_k(x_all[mine]).float()  # B x C
        k_all = concat_all_gather(k)  # W*B x C, row p = image perm[p]
        k_all = k_all[torch.argsort(perm)]  # W*B x C, row g = global image g
        return F.normalize(k_all[rank * b : (rank + 1) * b], dim=1)

    def forward(
        self, x_q: Tensor, x_k: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """q = query(x_q), and (q, k) when ``x_k`` is given (use this under DDP).

        The momentum update is not done here: call :meth:`momentum_update` first.
        """
        q = self.query(x_q)
        if x_k is None:
            return q
        return q, self.key(x_k, generator)


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=gen_device).to(device)


def extract_backbone_state(state: dict[str, Tensor], prefix: str = "encoder_q.backbone.") -> dict:
    """The query backbone's weights out of a MoCo state dict (keys without ``prefix``).

    Also strips a leading "module." (DDP); raises MedaugError when no key has the prefix.
    """
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value
    if not out:
        raise MedaugError(f"the checkpoint holds no {prefix!r} weights (not a MoCo state dict?)")
    return out
