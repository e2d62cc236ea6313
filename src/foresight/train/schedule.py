"""Learning-rate schedules: pure functions of the step. (Loss-weight schedules belong to the objectives:
``objectives/weights.py``.)"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine from ``lr`` down to ``min_lr`` at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def value_lr_multiplier(step: int, *, start: float, decay: float, total_steps: int) -> float:
    """UltraMemV2 (docs/memory.md): the memory values' learning-rate multiplier, ``start`` at step 0 falling
    linearly to 1 at step ``decay · total_steps`` and 1 after."""
    end = max(1.0, decay * total_steps)
    return 1.0 + (start - 1.0) * max(0.0, 1.0 - step / end)
