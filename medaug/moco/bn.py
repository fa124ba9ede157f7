"""Batch-split batch normalisation: one worker's batch normalised in independent groups.

MoCo's shuffle-BN keeps a query and its positive key from being normalised with the same
batch statistics (otherwise the pair can "cheat" by recognising shared statistics).  It
relies on several GPUs; on one worker the batch is split into ``groups`` BN groups
instead, and the key encoder shuffles the batch across them.

Sample n of a training batch belongs to group ``n % groups``.  The layer keeps the state
dict of :class:`torch.nn.BatchNorm2d` (same keys and shapes) and behaves exactly like it
in eval mode, so its weights load into a plain backbone.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medaug.errors import MedaugError


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are computed per group of the batch.

    Args:
        num_features: channels C.
        groups: number of BN groups G; a training batch of N images needs G | N.
        **kwargs: passed to :class:`torch.nn.BatchNorm2d`.
    """

    def __init__(self, num_features: int, groups: int = 1, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if groups < 1:
            raise MedaugError(f"bn_groups must be at least 1, got {groups}")
        self.groups = groups

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.groups}"

    def forward(self, x: Tensor) -> Tensor:  # x: N x C x H x W
        g = self.groups
        if not self.training or g == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % g:
            raise MedaugError(
                f"a batch of {n} images cannot be split into {g} BN groups: choose "
                "moco.bn_groups dividing pretrain.batch_size (and drop incomplete batches)"
            )
        # Sample n = a * G + g lands in channel block g of row a: one F.batch_norm call
        # normalises every group with its own statistics, without copying the input.
        xs = x.reshape(n // g, g * c, h, w)  # N/G x G*C x H x W
        mean = self.running_mean.repeat(g) if self.running_mean is not None else None
        var = self.running_var.repeat(g) if self.running_var is not None else None
        weight = self.weight.repeat(g) if self.weight is not None else None
        bias = self.bias.repeat(g) if self.bias is not None else None
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as in BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(
            xs, mean, var, weight, bias, True, 0.0 if momentum is None else momentum, self.eps
        )
        if mean is not None:
            # Each group updated its own copy; the running estimate is their average.
            self.running_mean.copy_(mean.view(g, c).mean(dim=0))
            self.running_var.copy_(var.view(g, c).mean(dim=0))
        return out.view(n, c, h, w)


def convert_split_bn(module: nn.Module, groups: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a SplitBatchNorm2d sharing its state.

    Returns the converted module (the same object unless ``module`` itself is a BN layer).
    ``groups == 1`` leaves the module unchanged.
    """
    if groups == 1:
        return module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SplitBatchNorm2d):
        new = SplitBatchNorm2d(
            module.num_features,
            groups,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_split_bn(child, groups)
        if converted is not child:
            setattr(module, name, converted)
    return module


def convert_plain_bn(module: nn.Module) -> nn.Module:
    """Replace every SplitBatchNorm2d in ``module`` by a plain BatchNorm2d with its state.

    The inverse of :func:`convert_split_bn`, for fine-tuning a pretrained backbone with
    ordinary batch statistics.  Returns the converted module.
    """
    if isinstance(module, SplitBatchNorm2d):
        new = nn.BatchNorm2d(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        ).to(device=module.weight.device if module.weight is not None else None)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_plain_bn(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
