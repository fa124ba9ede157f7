"""Learning-rate schedules and optimisers against torch's own schedulers."""

import math

import numpy as np
import pytest
import torch

from medaug.engine.schedule import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    lr_schedule,
    set_lr,
)
from medaug.errors import MedaugError


def _torch_lrs(make_scheduler, epochs, steps, base, per_step):
    """Learning rate of every step as torch's scheduler gives it."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    sched = make_scheduler(opt)
    out = []
    for _ in range(epochs):
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_step:
                sched.step()
        if not per_step:
            sched.step()
    return np.array(out)


@pytest.mark.parametrize("milestones", [[12, 18], [1], [], [0, 3, 3]])
def test_step_schedule_matches_multisteplr(milestones):
    epochs, steps, base = 20, 3, 1e-4
    ours = lr_schedule("step", base, epochs, steps, milestones, 0.1)
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, gamma=0.1),
        epochs, steps, base, per_step=False,
    )
    assert ours.shape == (epochs * steps,)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_paper_schedule_decays_at_epochs_12_and_18():
    lrs = lr_schedule("step", 1e-4, 20, 5, [12, 18], 0.1)
    per_epoch = lrs.reshape(20, 5)
    assert (per_epoch[:12] == 1e-4).all()
    np.testing.assert_allclose(per_epoch[12:18], 1e-5)
    np.testing.assert_allclose(per_epoch[18:], 1e-6)


def test_cosine_schedule_matches_cosineannealinglr():
    epochs, steps, base = 4, 7, 0.3
    ours = lr_schedule("cosine", base, epochs, steps)
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs * steps),
        epochs, steps, base, per_step=True,
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_constant_schedule():
    assert (lr_schedule("constant", 0.5, 3, 2) == 0.5).all()


def test_unknown_names_list_the_registry():
    with pytest.raises(MedaugError, match="step, cosine, constant"):
        lr_schedule("warmup", 1e-3, 2, 2)
    with pytest.raises(MedaugError, match="adam"):
        build_optimizer("lamb", [torch.nn.Parameter(torch.zeros(1))], 1e-3, 0.0)
    with pytest.raises(MedaugError, match="at least one epoch"):
        lr_schedule("step", 1e-3, 0, 2)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers_take_the_schedule(name):
    param = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(name, [param], 1e-2, 1e-4, momentum=0.9)
    set_lr(opt, 0.25)
    assert all(g["lr"] == 0.25 for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    param.sum().backward()
    before = param.detach().clone()
    opt.step()
    assert not torch.equal(before, param.detach())


def test_every_schedule_is_positive_and_non_increasing():
    for name in SCHEDULES:
        lrs = lr_schedule(name, 1e-3, 5, 4, [2], 0.5)
        assert (lrs >= 0).all() and (np.diff(lrs) <= 1e-18).all()


def test_warmup_then_cosine_matches_a_direct_computation():
    """MAE's recipe: linear warm-up over W epochs, then a half-cosine to 0 over the rest."""
    epochs, steps, warm_epochs, base = 5, 4, 2, 0.3
    lrs = lr_schedule("cosine", base, epochs, steps, warmup_epochs=warm_epochs)
    warm, rest = warm_epochs * steps, (epochs - warm_epochs) * steps
    expected = [base * (i + 1) / warm for i in range(warm)]
    expected += [base * 0.5 * (1 + math.cos(math.pi * j / rest)) for j in range(rest)]
    np.testing.assert_allclose(lrs, expected, rtol=0, atol=1e-15)
    # The step schedule keeps its milestones in epochs from the start.
    step = lr_schedule("step", base, epochs, steps, milestones=[3], warmup_epochs=1)
    np.testing.assert_allclose(step[:4], [base / 4, base / 2, 3 * base / 4, base])
    assert step[3 * steps - 1] == base and step[3 * steps] == pytest.approx(base * 0.1)
    with pytest.raises(MedaugError, match="warmup_epochs must lie in"):
        lr_schedule("cosine", base, epochs, steps, warmup_epochs=5)
