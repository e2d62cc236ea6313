"""Tasks tie data, trainer and evaluation together for one kind of run.

A task is one record, ``Task``: its name (a recipe's ``task:``, also the name of its own recipe section), the
dataclass of that section (``stargraph:``, ``text:``), which the recipe loader parses once at load
(``Recipe.task_config``), and its run function ``run(recipe, runs, out_dir, resume=False, **options)``. ``TASKS``
is the one registry of them. Every entry point starts a task through ``run_task``; every task trains its runs
through the one scheduler, ``foresight.tasks.pool.run_all`` (in turn or side by side, a time limit, a graceful
stop on SIGTERM / Ctrl-C), each run through the one run loop, ``foresight.tasks.run.train_run``, and starts its
result records with ``foresight.tasks.run.result_record``.

A new task adds its module and one ``Task`` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from foresight.errors import ForesightError
from foresight.tasks.stargraph import StarGraphTaskConfig, run_stargraph
from foresight.tasks.text import TextTaskConfig, run_text


@dataclass(frozen=True)
class Task:
    """One task: the config class of its recipe section and the function that runs a recipe's runs."""

    name: str  # the recipe's ``task:`` and the name of the task's own section
    config: type  # dataclass of that section, parsed through ``foresight.config.from_dict``
    run: Callable[..., list[dict]]  # run(recipe, runs, out_dir, resume=False, **options) -> result records


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("stargraph", StarGraphTaskConfig, run_stargraph),  # options: seeds, results_dir, time_limit_s, ...
    Task("text", TextTaskConfig, run_text),
)}


def get_task(name: str) -> Task:
    """The registered task ``name``; one line naming the known tasks otherwise."""
    if name not in TASKS:
        raise ForesightError(f"no task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def run_task(recipe, runs: dict, out_dir: Path, resume: bool = False, **options) -> list[dict]:
    """Run ``runs`` of ``recipe`` with the task its ``task:`` names; ``options`` are that task's own (the star
    graph's ``seeds``, ``results_dir``, ...; every task takes ``allow_changes``: resume a run whose settings
    changed, see ``foresight.train.fingerprint``)."""
    return get_task(recipe.task).run(recipe, runs, out_dir, resume, **options)
