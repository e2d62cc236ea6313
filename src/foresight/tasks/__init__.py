"""Tasks tie data, trainer and evaluation together for one kind of run.

A task is a function ``run(recipe, runs, out_dir, resume)``; ``TASKS`` maps a recipe's ``task:`` to it.
"""

from __future__ import annotations

from pathlib import Path


def _stargraph(recipe, runs, out_dir: Path, resume: bool):
    from foresight.tasks.stargraph import run_stargraph

    return run_stargraph(recipe, runs, out_dir, resume)


def _text(recipe, runs, out_dir: Path, resume: bool):
    from foresight.tasks.text import run_text

    return run_text(recipe, runs, out_dir, resume)


TASKS = {"stargraph": _stargraph, "text": _text}


def run_task(recipe, runs: dict, out_dir: Path, resume: bool = False):
    return TASKS[recipe.task](recipe, runs, out_dir, resume)
