"""Batch-split BN against separate BatchNorm2d layers, one per group."""

import copy

import pytest
import torch
from torch import nn

from medaug.errors import MedaugError
from medaug.moco.bn import SplitBatchNorm2d, convert_split_bn
from medaug.models.backbones import build_backbone


def _layers(c=3, groups=2):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(c)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
        plain.running_mean.uniform_(-1, 1)
        plain.running_var.uniform_(0.5, 2)
    split = convert_split_bn(copy.deepcopy(plain), groups)
    return plain, split


def test_train_mode_normalises_each_group_with_its_own_statistics():
    plain, split = _layers(groups=2)
    x = torch.randn(6, 3, 5, 5) * 3 + 1
    out = split.train()(x)
    # Reference: one fresh copy of the plain layer per group (samples n % 2 == g).
    means, variances = [], []
    for g in range(2):
        ref = copy.deepcopy(plain).train()
        torch.testing.assert_close(out[g::2], ref(x[g::2]), atol=1e-5, rtol=0)
        means.append(ref.running_mean)
        variances.append(ref.running_var)
    torch.testing.assert_close(split.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(variances).mean(0))
    assert int(split.num_batches_tracked) == 1


def test_eval_mode_and_state_dict_are_those_of_batchnorm():
    plain, split = _layers(groups=4)
    x = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(split.eval()(x), plain.eval()(x))
    assert isinstance(split, nn.BatchNorm2d)
    sd_plain, sd_split = plain.state_dict(), split.state_dict()
    assert sd_plain.keys() == sd_split.keys()
    assert all(torch.equal(sd_plain[k], sd_split[k]) for k in sd_plain)


def test_no_cross_talk_between_groups():
    _, split = _layers(groups=2)
    split.train()
    x = torch.randn(8, 3, 4, 4)
    y = x.clone()
    y[2] += 5.0  # image 2 is in group 0 (even rows)
    a, b = split(x), split(y)
    torch.testing.assert_close(a[1::2], b[1::2])  # group 1 untouched
    assert not torch.allclose(a[0::2], b[0::2])


def test_batch_not_divisible_by_groups_is_a_user_error():
    _, split = _layers(groups=4)
    with pytest.raises(MedaugError, match="bn_groups"):
        split.train()(torch.randn(6, 3, 4, 4))


def test_converted_backbone_keeps_weights_and_eval_outputs():
    torch.manual_seed(0)
    plain, _ = build_backbone("resnet18")
    plain.eval()
    split = convert_split_bn(copy.deepcopy(plain), 2).eval()
    assert sum(isinstance(m, SplitBatchNorm2d) for m in split.modules()) == 20
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(split(x), plain(x))
    fresh, _ = build_backbone("resnet18")
    fresh.load_state_dict(split.state_dict())  # loads into a plain backbone
