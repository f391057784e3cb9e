"""Learning-rate schedules, one value per training iteration.

``build_lr_schedule(cfg, steps_per_epoch)`` returns a float32 array ``lr[i]`` = base learning
rate of iteration ``i`` (0-based, ``max_iters`` or ``epoch_size * steps_per_epoch`` entries).
Parameter groups scale it by their multiplier (``paramwise`` ``lr_mult``, see ``optim.py``), so the
array is what ``tools/vis_lr.py`` plots and what a resumed run indexes with its step counter.

Schedules (``lr_schedule``):

* ``poly`` -- mmcv/mmseg ``PolyLrUpdaterHook`` with ``by_epoch=False``:
  ``regular(i) = (lr - min_lr) * (1 - i / T) ** poly_power + min_lr``; during linear warmup
  (``i < W``) mmcv multiplies the regular value by ``1 - (1 - i / W) * (1 - warmup_ratio)``,
  so iteration 0 runs at ``regular(0) * warmup_ratio`` (SegFormer: 1500 iters, ratio 1e-6).
* ``cosine`` -- the ViT recipe (MindSpore zoo / MindCV): linear warmup from
  ``lr * warmup_ratio`` to ``lr`` over ``W`` iterations, then
  ``min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (i - W) / (T - W)))`` over the rest.
* ``constant`` -- ``lr`` after the same mmcv-style linear warmup as ``poly``.

``W`` comes from ``warmup_iters`` or ``warmup_epochs * steps_per_epoch`` (set one, not both).
"""
import math

import numpy as np

from src.utils.errors import UserError

LR_SCHEDULES = ("poly", "cosine", "constant")


class ScheduleError(UserError, ValueError):
    """A schedule key in the config has a value the schedule cannot use."""


def warmup_iterations(cfg, steps_per_epoch):
    """Number of warmup iterations from ``warmup_iters`` or ``warmup_epochs``."""
    iters, epochs = int(cfg.warmup_iters), float(cfg.warmup_epochs)
    if iters < 0 or epochs < 0:
        raise ScheduleError(f"config keys 'warmup_iters'={cfg.warmup_iters} / 'warmup_epochs'="
                            f"{cfg.warmup_epochs}: must be >= 0")
    if iters > 0 and epochs > 0:
        raise ScheduleError(f"config keys 'warmup_iters'={iters} and 'warmup_epochs'={epochs} are "
                            f"both set; set one of them (the other to 0)")
    return iters if iters > 0 else int(round(epochs * steps_per_epoch))


def _check(cfg, steps_per_epoch):
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ScheduleError(f"config key 'lr_schedule': '{cfg.lr_schedule}' is not one of "
                            f"{list(LR_SCHEDULES)}")
    if int(steps_per_epoch) <= 0:
        raise ScheduleError(f"steps_per_epoch must be > 0, got {steps_per_epoch} (empty dataset "
                            f"or batch_size larger than the dataset with drop_remainder?)")
    if int(cfg.max_iters) < 0:
        raise ScheduleError(f"config key 'max_iters': must be >= 0 (0: schedule by epoch_size), "
                            f"got {cfg.max_iters}")
    if int(cfg.max_iters) > 0 and int(cfg.epoch_size) > 0:
        raise ScheduleError(f"config keys 'epoch_size'={cfg.epoch_size} and 'max_iters'="
                            f"{cfg.max_iters} are both set; set one of them (the other to 0)")
    if int(cfg.max_iters) == 0 and int(cfg.epoch_size) <= 0:
        raise ScheduleError(f"config key 'epoch_size': must be > 0 (or set max_iters), got "
                            f"{cfg.epoch_size}")
    if float(cfg.lr) <= 0:
        raise ScheduleError(f"config key 'lr': must be > 0, got {cfg.lr}")
    if not 0 <= float(cfg.min_lr) <= float(cfg.lr):
        raise ScheduleError(f"config key 'min_lr': must be in [0, lr={cfg.lr}], got {cfg.min_lr}")
    if not 0 <= float(cfg.warmup_ratio) <= 1:
        raise ScheduleError(f"config key 'warmup_ratio': must be in [0, 1], got {cfg.warmup_ratio}")
    if float(cfg.poly_power) <= 0:
        raise ScheduleError(f"config key 'poly_power': must be > 0, got {cfg.poly_power}")


def lr_at(cfg, step, total_steps, warmup_steps):
    """Base learning rate of iteration ``step`` (0-based) -- the closed forms above."""
    base, min_lr, ratio = float(cfg.lr), float(cfg.min_lr), float(cfg.warmup_ratio)
    if cfg.lr_schedule == "cosine":
        if step < warmup_steps:
            return base * (ratio + (1.0 - ratio) * step / warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "poly":
        regular = (base - min_lr) * (1.0 - step / total_steps) ** float(cfg.poly_power) + min_lr
    else:
        regular = base
    if step < warmup_steps:
        return regular * (1.0 - (1.0 - step / warmup_steps) * (1.0 - ratio))
    return regular


def total_iterations(cfg, steps_per_epoch):
    """Iterations of the run: ``max_iters`` when set, else ``epoch_size * steps_per_epoch``."""
    _check(cfg, steps_per_epoch)
    return int(cfg.max_iters) or int(cfg.epoch_size) * int(steps_per_epoch)


def build_lr_schedule(cfg, steps_per_epoch):
    """Per-iteration base learning rates, ``np.float32[total_iterations]``."""
    total = total_iterations(cfg, steps_per_epoch)
    warmup = warmup_iterations(cfg, steps_per_epoch)  # may exceed a short run: then all warmup
    return np.array([lr_at(cfg, i, total, warmup) for i in range(total)], dtype=np.float32)
