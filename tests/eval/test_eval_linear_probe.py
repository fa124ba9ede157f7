"""Batched linear probes against a one-head-at-a-time torch reference."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medaug.eval.linear_probe import epoch_order, init_head, train_linear_probes
from medaug.eval.metrics import auc


def _planted(n=900, dim=24, seed=0, noise=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    u = rng.normal(size=dim)
    y = (x @ u > 0).astype(np.float32)
    if noise:
        y = rng.integers(0, 2, n).astype(np.float32)
    return x, y


@pytest.mark.parametrize("noise", [False, True])
def test_planted_signal_is_found_and_noise_is_not(noise):
    x, y = _planted(n=1500, dim=16, noise=noise)
    rows = np.arange(len(x))
    splits = [rows[i * 150 : (i + 1) * 150] for i in range(5)]
    select, test = rows[750:900], rows[900:]
    out = train_linear_probes(x, y, np.ones_like(y, bool), splits, select, test,
                              lr=1e-2, epochs=30, progress=False)
    assert out.test_scores.shape == (5, len(test), 1)
    aucs = [auc(y[test], out.test_scores[s, :, 0]) for s in range(5)]
    if noise:
        assert all(0.4 < a < 0.6 for a in aucs)
    else:
        assert min(aucs) > 0.95


def _reference_head(x, y, m, train, select, test, s, o, lr, bs, epochs, wd, seed):
    """One head alone: nn.Linear + torch.optim.Adam, same init and order, masked loss, no step
    when a batch holds no usable label, selection by strictly better AUC."""
    dim = x.shape[1]
    w0, b0 = init_head(seed, s, dim, y.shape[1])
    lin = torch.nn.Linear(dim, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w0[:, o])[None])
        lin.bias.fill_(float(b0[o]))
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=wd)
    xt, yt, mt = torch.from_numpy(x), torch.from_numpy(y[:, o]), torch.from_numpy(m[:, o])
    best, best_state = -np.inf, None
    sel_keep = m[select, o]
    for epoch in range(epochs):
        order = train[epoch_order(seed, s, epoch, len(train))]
        for start in range(0, len(order), bs):
            idx = torch.from_numpy(order[start : start + bs])
            keep = mt[idx]
            if not keep.any():
                continue
            logits = lin(xt[idx][keep])[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt[idx][keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            sel_scores = lin(xt[select][sel_keep])[:, 0].numpy()
        a = roc_auc_score(y[select][sel_keep, o], sel_scores)
        if a > best:
            best, best_state = a, (lin.weight.detach().clone(), lin.bias.detach().clone())
    w, b = best_state
    with torch.no_grad():
        return torch.sigmoid(xt[test] @ w[0] + b).numpy(), w[0].numpy()


def test_batched_heads_equal_single_heads():
    torch.manual_seed(0)
    x, y1 = _planted(n=400, dim=8, seed=1)
    rng = np.random.default_rng(5)
    y2 = (x[:, 0] + rng.normal(size=len(x)) > 0).astype(np.float32)
    y = np.stack([y1, y2], 1)
    m = rng.random(y.shape) > 0.2  # uncertain labels masked per observation
    rows = np.arange(len(x))
    # Unequal split sizes (last batch partial, shorter epochs) exercise the active mask.
    splits = [rows[:37], rows[40:61], rows[70:140]]
    select, test = rows[200:300], rows[300:]
    kw = dict(lr=3e-3, batch_size=8, epochs=6, weight_decay=1e-3, seed=11)
    out = train_linear_probes(x, y, m, splits, select, test, progress=False, **kw)
    for s, train in enumerate(splits):
        for o in range(2):
            ref_scores, ref_w = _reference_head(
                x, y, m, train, select, test, s, o, kw["lr"], kw["batch_size"],
                kw["epochs"], kw["weight_decay"], kw["seed"])
            np.testing.assert_allclose(out.weight[s, :, o], ref_w, atol=2e-5)
            np.testing.assert_allclose(out.test_scores[s, :, o], ref_scores, atol=2e-5)
    # A split trained alone (same id, same seed) reproduces its batched result.
    alone = train_linear_probes(x, y, m, [splits[2]], select, test, split_ids=[2],
                                progress=False, **kw)
    np.testing.assert_allclose(alone.test_scores[0], out.test_scores[2], atol=1e-6)
    np.testing.assert_array_equal(alone.best_epoch[0], out.best_epoch[2])


def test_average_ranks_match_scipy_with_ties():
    from scipy.stats import rankdata

    from medaug.eval.linear_probe import _batched_auc, average_ranks

    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, size=(7, 40)).astype(np.float64)  # many ties
    x[0] = 1.0  # a row of one value
    np.testing.assert_array_equal(average_ranks(x), rankdata(x, axis=1))
    np.testing.assert_array_equal(average_ranks(np.array([[3.0, 1.0, 3.0, 2.0]])),
                                  [[3.5, 1.0, 3.5, 2.0]])
    labels = rng.integers(0, 2, 40)
    for row, got in zip(x, _batched_auc(labels, x)):
        assert got == pytest.approx(roc_auc_score(labels, row), abs=1e-12)
