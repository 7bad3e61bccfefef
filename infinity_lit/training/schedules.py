"""The learning-rate schedule both LightningModules use: linear warm-up, then cosine decay or constant.

    factor(s) = (s + 1) / W                                         s < W   (warm-up; W = warmup_steps)
    factor(s) = r + (1 − r) · ½ · (1 + cos(π · min(1, (s − W) / max(1, T − W))))   s ≥ W   (cosine)
    factor(s) = 1                                                   s ≥ W   (constant: no horizon T)

with r = ``min_lr_ratio`` and T the horizon in optimiser steps (``OptimizerConfig.decay_steps``, or the
trainer's total steps). The learning rate at step s is the configured one times factor(s); a
``torch.optim.lr_scheduler.LambdaLR`` stepped once per training batch applies it.
"""

from __future__ import annotations

import math
from functools import partial

import torch


def lr_factor(step: int, warmup_steps: int, total_steps: int | None, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    Args:
        step: optimiser steps done so far (``LambdaLR``'s ``last_epoch``), >= 0.
        warmup_steps: length of the linear warm-up from 1/W to 1, >= 0 (0 = none).
        total_steps: horizon T of the cosine decay (the factor is ``min_lr_ratio`` from T on); None = constant
            1 after the warm-up.
        min_lr_ratio: the factor at and after the horizon, in [0, 1].

    Returns:
        the multiplier, in [min_lr_ratio, 1] after the warm-up and in (0, 1] during it.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` applying ``lr_factor`` (arguments as there); step it once per batch.

    The factor is a ``functools.partial`` rather than a closure, so its (empty) state pickles with the
    checkpoint and a resume applies the schedule of the resumed run's configuration.
    """
    factor = partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
