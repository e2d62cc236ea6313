"""Learning-rate and loss-weight schedules: pure functions of the step."""

from __future__ import annotations

import math

from foresight.errors import ForesightError


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


def check_weight(weight, where: str) -> None:
    """A loss weight is a number or a piecewise-constant schedule ``[[at, value], ...]``.

    ``at`` is a step number when it is an int, a fraction of the run when it is a float; entries must be
    in increasing order, and the first starts at 0.
    """
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        return
    ok = isinstance(weight, list) and weight and all(
        isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(x, (int, float)) for x in e) for e in weight
    )
    if not ok or weight[0][0] != 0:
        raise ForesightError(f"{where} must be a number or a schedule [[0, value], [at, value], ...]")


def weight_at(weight, step: int, total_steps: int) -> float:
    """The value of a loss weight (number or schedule, see ``check_weight``) at ``step``."""
    if not isinstance(weight, list):
        return float(weight)
    value = float(weight[0][1])
    for at, v in weight:
        at_step = at if isinstance(at, int) else at * total_steps
        if step >= at_step:
            value = float(v)
    return value
