"""Loss-weight schedules: a number, or a piecewise-constant schedule in steps or fractions of the run.

Objectives own their weights (``ObjectiveConfig.weight``, checked when an objective list is parsed); the trainer
and ``foresight.wrap`` read the value at each step. Pure functions, below both.
"""

from __future__ import annotations

from foresight.errors import ForesightError

SCHEDULE_FORM = "[[{step: 0}, 1.0], [{step: 300}, 2.0]] or [[{frac: 0}, 0.3], [{frac: 0.7}, 0.1]]"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _old_form_rewritten(weight: list) -> str:
    """An old ``[[at, value], ...]`` schedule (int ``at`` = step, float = fraction) in the explicit form, as YAML."""
    unit = "frac" if any(isinstance(at, float) for at, _ in weight) else "step"
    return "[" + ", ".join(f"[{{{unit}: {at:g}}}, {value!r}]" for at, value in weight) + "]"


def check_weight(weight, where: str) -> None:
    """A loss weight is a number or a piecewise-constant schedule with explicit times (docs/objectives.md,
    "Combining objectives"): ``[[{step: 0}, v0], [{step: s1}, v1], ...]`` in optimiser steps, or
    ``[[{frac: 0}, v0], [{frac: f1}, v1], ...]`` in fractions of the run. The weight is v_i from time i on; the
    first time is 0, times increase, and one schedule uses one unit."""
    if _is_number(weight):
        return
    if isinstance(weight, list) and weight and all(
            isinstance(e, (list, tuple)) and len(e) == 2 and all(_is_number(x) for x in e) for e in weight):
        raise ForesightError(f"{where}: a schedule time must say its unit; write {_old_form_rewritten(weight)} "
                             f"(an int time was a step, a float a fraction of the run)")
    ok = isinstance(weight, list) and weight and all(
        isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], dict) and len(e[0]) == 1
        and set(e[0]) <= {"step", "frac"} and _is_number(next(iter(e[0].values()))) and _is_number(e[1])
        for e in weight)
    if not ok:
        raise ForesightError(f"{where} must be a number or a schedule like {SCHEDULE_FORM}")
    units = {next(iter(at)) for at, _ in weight}
    times = [next(iter(at.values())) for at, _ in weight]
    if len(units) > 1:
        raise ForesightError(f"{where}: one schedule counts in steps or in fractions of the run, not both")
    unit = units.pop()
    if unit == "step" and not all(isinstance(t, int) for t in times):
        raise ForesightError(f"{where}: a {{step: ...}} time is a whole number of steps, got {times}")
    if unit == "frac" and not all(0 <= t <= 1 for t in times):
        raise ForesightError(f"{where}: a {{frac: ...}} time is a fraction of the run in [0, 1], got {times}")
    if times[0] != 0 or any(a >= b for a, b in zip(times, times[1:])):
        raise ForesightError(f"{where}: schedule times must start at 0 and increase, got {times}")


def in_fractions(weight) -> bool:
    """Whether ``weight`` is a schedule whose times are fractions of the run (it then needs the run's length)."""
    return isinstance(weight, list) and any("frac" in at for at, _ in weight)


def weight_at(weight, step: int, total_steps: int) -> float:
    """The value of a loss weight (number or schedule, see ``check_weight``) at ``step`` of ``total_steps``."""
    if not isinstance(weight, list):
        return float(weight)
    if not all(isinstance(at, dict) for at, _ in weight):  # built in code, not from a recipe: the same one line
        check_weight(weight, "weight")
    value = float(weight[0][1])
    for at, v in weight:
        at_step = at["step"] if "step" in at else at["frac"] * total_steps
        if step >= at_step:
            value = float(v)
    return value
