"""Learning-rate schedules against closed-form values and torch's schedulers."""
import math

import numpy as np
import pytest
import torch

from src.engine.schedules import ScheduleError, build_lr_schedule
from src.utils.config import load_config


def make_cfg(**keys):
    return load_config("", [f"--{k}={v}" for k, v in keys.items()])


def torch_lrs(scheduler_fn, base_lr, total):
    """lr of iterations 0..total-1 from a torch scheduler stepped once per iteration."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    sched = scheduler_fn(opt)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(lrs)


def test_poly_closed_form_at_chosen_steps():
    # lr 0.01, power 0.9, min_lr 1e-4, 10 epochs x 10 steps, no warmup (Segmenter style)
    lrs = build_lr_schedule(make_cfg(lr_schedule="poly", lr=0.01, poly_power=0.9, min_lr=1e-4,
                                     warmup_iters=0, epoch_size=10), steps_per_epoch=10)
    assert lrs.shape == (100,) and lrs.dtype == np.float32
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[50] == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4, rel=1e-6)
    assert lrs[99] == pytest.approx((0.01 - 1e-4) * 0.01 ** 0.9 + 1e-4, rel=1e-6)


def test_poly_warmup_has_mmseg_semantics():
    # mmcv linear warmup multiplies the regular poly value by 1 - (1 - i/W)(1 - ratio)
    lrs = build_lr_schedule(make_cfg(lr_schedule="poly", lr=0.01, poly_power=1.0, min_lr=0.0,
                                     warmup_iters=10, warmup_ratio=0.1, epoch_size=10),
                            steps_per_epoch=10)
    assert lrs[0] == pytest.approx(0.01 * 0.1)                     # regular(0) * ratio
    assert lrs[5] == pytest.approx(0.0095 * 0.55, rel=1e-6)        # 0.01*(1-5/100) * (1-0.5*0.9)
    assert lrs[10] == pytest.approx(0.009, rel=1e-6)               # warmup over: plain poly
    assert lrs[99] == pytest.approx(0.0001, rel=1e-5)


def test_poly_with_warmup_matches_torch_chained_schedulers():
    # With min_lr 0, mmcv's poly x linear-warmup factor = torch PolynomialLR chained with LinearLR.
    total, warmup, ratio, power = 60, 15, 1e-2, 1.0
    ours = build_lr_schedule(make_cfg(lr_schedule="poly", lr=6e-5, poly_power=power, min_lr=0.0,
                                      warmup_iters=warmup, warmup_ratio=ratio, epoch_size=6),
                             steps_per_epoch=10)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.ChainedScheduler([
        torch.optim.lr_scheduler.LinearLR(o, start_factor=ratio, total_iters=warmup),
        torch.optim.lr_scheduler.PolynomialLR(o, total_iters=total, power=power)]), 6e-5, total)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-12)


def test_cosine_with_warmup_matches_torch_sequential_schedulers():
    # ViT recipe: linear warmup to lr over W iterations, then cosine to min_lr over the rest.
    steps, epochs, warmup_epochs, ratio = 8, 10, 2, 0.05
    total, warmup = steps * epochs, steps * warmup_epochs
    ours = build_lr_schedule(make_cfg(lr_schedule="cosine", lr=3e-3, min_lr=1e-5,
                                      warmup_epochs=warmup_epochs, warmup_ratio=ratio,
                                      epoch_size=epochs), steps_per_epoch=steps)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
        torch.optim.lr_scheduler.LinearLR(o, start_factor=ratio, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=1e-5)],
        milestones=[warmup]), 3e-3, total)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    # closed form at the middle of the cosine part: halfway between lr and min_lr
    mid = warmup + (total - warmup) // 2
    assert ours[mid] == pytest.approx(1e-5 + (3e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_constant_with_warmup_and_zero_warmup_ratio():
    lrs = build_lr_schedule(make_cfg(lr_schedule="constant", lr=0.1, warmup_iters=4,
                                     warmup_ratio=0.0, epoch_size=2), steps_per_epoch=5)
    np.testing.assert_allclose(lrs, [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                               rtol=1e-6)


def test_bad_keys_are_clear_errors():
    with pytest.raises(ScheduleError, match="warmup_iters.*warmup_epochs"):
        build_lr_schedule(make_cfg(warmup_iters=5, warmup_epochs=1), 10)
    with pytest.raises(ScheduleError, match="lr_schedule.*'step'"):
        build_lr_schedule(make_cfg(lr_schedule="step"), 10)
    with pytest.raises(ScheduleError, match="min_lr"):
        build_lr_schedule(make_cfg(lr=0.01, min_lr=0.1), 10)
    with pytest.raises(ScheduleError, match="steps_per_epoch"):
        build_lr_schedule(make_cfg(), 0)
