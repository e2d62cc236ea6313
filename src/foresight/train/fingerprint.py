"""What makes a run the run it is: the settings ``--resume`` checks (issue 21, item 5).

A run's *settings* are a flat mapping ``"section.key" -> value`` of every recipe value that changes what the run
computes: the task's data settings and data seed, the whole model, every objective with its settings and weight,
and the optimiser, schedule, batch size and ``train.seed``. They are stored in every checkpoint (``settings``)
and compared on ``--resume``: a difference stops the resume with one line naming the first one, unless the user
asks to continue anyway (``--allow-changes``), when every difference is named on stderr.

Left out, because they do not change the numbers a step computes (decided in issue 21, listed in
``TRAIN_EXEMPT`` and each task config's ``RESUME_EXEMPT``): logging, evaluation and checkpoint cadence, output
and logger options, the device, speed options that change nothing beyond rounding (compile, activation
checkpointing, per-head backward, micro-batch size: accumulation equals one big batch), guards
(``max_skipped_steps``) and ``stop_after``, whose purpose is to stop a run that a later ``--resume`` continues.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass

# train.* fields that a resumed run may change freely (see the module docstring)
TRAIN_EXEMPT = frozenset({
    "stop_after", "micro_batch_size", "device", "log_every", "eval_every", "ckpt_every", "keep_last",
    "tensorboard", "loggers", "peak_tflops", "compile", "compile_backend", "activation_checkpointing",
    "per_head_backward", "max_skipped_steps",
})


def _plain(value):
    """The JSON form of a value (tuples become lists), so a value read back from a checkpoint compares equal."""
    return json.loads(json.dumps(value, default=str))


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = _plain(value)


def section_settings(section: str, config, exempt=()) -> dict:
    """``config`` (a dataclass) as ``{"section.field": value}``, fields in ``exempt`` left out."""
    out: dict = {}
    for f in fields(config):
        if f.name not in exempt:
            _flatten(f"{section}.{f.name}", getattr(config, f.name), out)
    return out


def run_settings(*, run: str, specs: list, model, train, task: tuple[str, object] | None = None) -> dict:
    """The settings of one run: ``task`` = (section name, the task's parsed section), then ``model.*``,
    ``train.*`` and ``runs.<run>[i].*`` (objective i: its name and every field of its config)."""
    out: dict = {}
    if task is not None:
        section, config = task
        out.update(section_settings(section, config, getattr(config, "RESUME_EXEMPT", ())))
    out.update(section_settings("model", model))
    out.update(section_settings("train", train, TRAIN_EXEMPT))
    for i, spec in enumerate(specs):
        config = getattr(spec, "config", None)
        name = getattr(spec, "name", None) or (spec.get("name") if isinstance(spec, dict) else None)
        out[f"runs.{run}[{i}].name"] = name
        values = asdict(config) if is_dataclass(config) else dict(spec) if isinstance(spec, dict) else {}
        for key, value in values.items():
            if key != "name":
                _flatten(f"runs.{run}[{i}].{key}", value, out)
    return out


def differences(saved: dict, now: dict) -> list[str]:
    """Every setting that differs, in the order of ``now`` (then keys only ``saved`` has), each as
    ``"key was X in the run, Y now"``."""
    missing = object()
    keys = [*now, *(k for k in saved if k not in now)]
    out = []
    for key in keys:
        old, new = saved.get(key, missing), now.get(key, missing)
        if old != new:
            out.append(f"{key} was {_show(old, missing)} in the run, {_show(new, missing)} now")
    return out


def _show(value, missing) -> str:
    if value is missing:
        return "not set"
    return json.dumps(value) if not isinstance(value, float) else f"{value:g}" if abs(value) >= 1e-4 else repr(value)
