"""Momentum update, projection head, query/key and shuffle-BN."""

import copy

import pytest
import torch
from torch import nn

from medaug.errors import MedaugError
from medaug.moco.model import (
    MoCo,
    ProjectionHead,
    concat_all_gather,
    extract_backbone_state,
    momentum_update,
)
from medaug.models.backbones import build_backbone


def test_projection_head_shapes():
    head = ProjectionHead(512, 512, 128)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert head(torch.randn(3, 512)).shape == (3, 128)


def test_momentum_update_formula():
    torch.manual_seed(0)
    q_model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    k_model = copy.deepcopy(q_model)
    with torch.no_grad():
        for p in k_model.parameters():
            p.normal_()
        k_model[1].running_mean.fill_(7.0)
    before = [p.clone() for p in k_model.parameters()]
    momentum_update(q_model, k_model, 0.9)
    for old, q, k in zip(before, q_model.parameters(), k_model.parameters()):
        torch.testing.assert_close(k, 0.9 * old + 0.1 * q)
    assert torch.all(k_model[1].running_mean == 7.0)  # buffers are the key encoder's own


def test_concat_all_gather_is_identity_without_distributed():
    t = torch.randn(3, 2)
    assert concat_all_gather(t) is t


@pytest.fixture(scope="module")
def moco():
    torch.manual_seed(0)
    return MoCo("resnet18", hidden=64, dim=16, momentum=0.99, bn_groups=2)


def test_moco_structure(moco):
    assert moco.backbone() is moco.encoder_q.backbone
    assert all(not p.requires_grad for p in moco.encoder_k.parameters())
    assert all(p.requires_grad for p in moco.encoder_q.parameters())
    for a, b in zip(moco.encoder_q.parameters(), moco.encoder_k.parameters()):
        assert torch.equal(a, b) and a is not b
    fresh, _ = build_backbone("resnet18")
    fresh.load_state_dict(extract_backbone_state(moco.state_dict()))
    with pytest.raises(MedaugError, match="no 'encoder_q.backbone.'"):
        extract_backbone_state({"fc.weight": torch.zeros(1)})


def test_query_and_key_are_unit_vectors(moco):
    moco.train()
    x = torch.randn(4, 3, 32, 32)
    q, k = moco(x, x, generator=torch.Generator().manual_seed(0))
    assert q.shape == k.shape == (4, 16)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(k.norm(dim=1), torch.ones(4))
    assert q.requires_grad and not k.requires_grad


def test_key_rows_follow_the_input_rows_through_the_shuffle(moco):
    moco.train()
    x = torch.randn(8, 3, 32, 32)
    k = moco.key(x, generator=torch.Generator().manual_seed(3))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        shuffled = moco.encoder_k(x[perm])  # row p = image perm[p]
    expected = torch.nn.functional.normalize(shuffled, dim=1)[torch.argsort(perm)]
    torch.testing.assert_close(k, expected)


def _changed_rows(fn, x, j):
    y = x.clone()
    y[j] = torch.randn_like(y[j])
    a, b = fn(x), fn(y)
    return {i for i in range(len(x)) if not torch.allclose(a[i], b[i], atol=1e-6)}


def test_query_and_key_bn_groups_differ(moco):
    """In train mode an image only influences its own BN group: for the query that is the
    rows of its parity, for the key the images sharing its shuffled group."""
    moco.train()
    x = torch.randn(8, 3, 32, 32)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(11))
    key_group = {int(perm[p]): p % 2 for p in range(8)}
    differs = 0
    for j in range(8):
        q_rows = _changed_rows(lambda t: moco.query(t).detach(), x, j)
        k_rows = _changed_rows(lambda t: moco.key(t, torch.Generator().manual_seed(11)), x, j)
        assert q_rows == {i for i in range(8) if i % 2 == j % 2}
        assert k_rows == {i for i in range(8) if key_group[i] == key_group[j]}
        differs += q_rows != k_rows
    assert differs > 0  # the key statistics come from other images than the query's


def test_eval_mode_key_is_per_image(moco):
    moco.eval()
    x = torch.randn(4, 3, 32, 32)
    together = moco.key(x)
    alone = torch.cat([moco.key(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    moco.train()


def test_momentum_update_moves_the_key_encoder_only(moco):
    moco.train()
    opt = torch.optim.SGD(moco.encoder_q.parameters(), lr=0.5)
    x = torch.randn(4, 3, 32, 32)
    moco.query(x).sum().backward()
    opt.step()
    opt.zero_grad()
    k_before = [p.clone() for p in moco.encoder_k.parameters()]
    moco.momentum_update()
    for old, q, k in zip(k_before, moco.encoder_q.parameters(), moco.encoder_k.parameters()):
        torch.testing.assert_close(k, 0.99 * old + 0.01 * q)


def test_autocast_gives_float32_unit_outputs(moco):
    moco.train()
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k = moco(x, x)
    assert q.dtype == k.dtype == torch.float32
    torch.testing.assert_close(q.norm(dim=1), torch.ones(4), atol=1e-3, rtol=0)


def test_export_backbone_has_plain_bn_and_the_same_weights(moco):
    from medaug.moco.bn import SplitBatchNorm2d

    exported = moco.export_backbone()
    assert exported is not moco.backbone()
    assert not any(isinstance(m, SplitBatchNorm2d) for m in exported.modules())
    assert any(isinstance(m, SplitBatchNorm2d) for m in moco.backbone().modules())
    own, out = moco.backbone().state_dict(), exported.state_dict()
    assert own.keys() == out.keys() and all(torch.equal(own[k], out[k]) for k in own)
    exported.train()
    exported(torch.randn(3, 3, 32, 32))  # an odd batch is fine without BN groups
