"""Tasks tie data, trainer and evaluation together for one kind of run.

A task is a function ``run(recipe, runs, out_dir, resume, **options)``; ``TASKS`` maps a recipe's ``task:`` to it,
and ``TASK_CONFIGS`` to the dataclass of its own recipe section (``stargraph:``, ``text:``), which the recipe loader
parses once at load (``Recipe.task_config``). Every entry point starts a task through ``run_task``; every task
trains each run through the one run loop, ``foresight.tasks.run.train_run``, and starts its result records with
``foresight.tasks.run.result_record``.
"""

from __future__ import annotations

import importlib
from pathlib import Path


def _stargraph(recipe, runs, out_dir: Path, resume: bool, **options):
    from foresight.tasks.stargraph import run_stargraph

    return run_stargraph(recipe, runs, out_dir, resume, **options)  # seeds, results_dir, time_limit_s, ...


def _text(recipe, runs, out_dir: Path, resume: bool, allow_changes: bool = False):
    from foresight.tasks.text import run_text

    return run_text(recipe, runs, out_dir, resume, allow_changes=allow_changes)


TASKS = {"stargraph": _stargraph, "text": _text}
# task -> "module:class" of its section's config (imported on use: a task module pulls in its data and models)
TASK_CONFIGS = {"stargraph": "foresight.tasks.stargraph:StarGraphTaskConfig",
                "text": "foresight.tasks.text:TextTaskConfig"}


def task_config_class(task: str) -> type:
    module, name = TASK_CONFIGS[task].split(":")
    return getattr(importlib.import_module(module), name)


def run_task(recipe, runs: dict, out_dir: Path, resume: bool = False, **options):
    """Run ``runs`` of ``recipe`` with the task its ``task:`` names; ``options`` are that task's own (the star
    graph's ``seeds``, ``results_dir``, ...; every task takes ``allow_changes``: resume a run whose settings
    changed, see ``foresight.train.fingerprint``)."""
    return TASKS[recipe.task](recipe, runs, out_dir, resume, **options)
