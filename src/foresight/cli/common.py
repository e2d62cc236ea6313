"""Pieces shared by the command modules."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from foresight.errors import ForesightError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of every command that trains from a recipe."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=200 (repeatable)")
    p.add_argument("--runs", help="comma-separated subset of the recipe's runs, e.g. ntp,top")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<task>-<recipe>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue each run from its newest checkpoint in --out; refused if a setting that changes "
                        "the run (model, objectives, data settings and seeds, optimiser, schedule, batch size) "
                        "differs from the run's")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue even if such settings changed (each change is named on stderr)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (removes only the files foresight wrote there)")


def run_recipe(name: str, args, group: str = "", *, task: str | None = None, overrides: list[str] | None = None,
               **options) -> list[dict]:
    """Load a recipe with the command line's overrides (and ``overrides`` the command adds) and hand it to its
    task in the run folder the command line names. ``task``: the task the command is for (another is refused in
    one line); ``options``: that task's own (``foresight.tasks.run_task``)."""
    from foresight.tasks import run_task
    from foresight.tasks.recipe import load_recipe, select_runs

    recipe = load_recipe(name, args.overrides + (overrides or []), group)
    if task is not None and recipe.task != task:
        raise ForesightError(f"{recipe.path} is a {recipe.task!r} recipe; `foresight {task} run` needs task: {task} "
                             "(use `foresight train` for other tasks)")
    runs = select_runs(recipe, args.runs)
    with claimed(run_folder(recipe, args), args) as out:
        return run_task(recipe, runs, out, resume=args.resume, allow_changes=args.allow_changes, **options)


@contextlib.contextmanager
def claimed(out: Path, args):
    """Hold ``out`` for this run (``foresight.train.run_folder.claim``: lock, one run per folder, --overwrite);
    under torchrun rank 0 holds the lock and every rank gets its verdict."""
    from foresight.train import distributed
    from foresight.train.run_folder import claim

    with contextlib.ExitStack() as stack:
        error = None
        try:
            stack.enter_context(claim(out, args.resume, getattr(args, "overwrite", False), distributed.is_main()))
        except ForesightError as e:
            error = str(e)
        error = distributed.agree(error)
        if error is not None:
            raise ForesightError(error)
        yield out


def run_folder(recipe, args) -> Path:
    """``--out``, or a new ``runs/<task>-<recipe>-<time>``; --resume needs an explicit folder.

    Under torchrun this joins the job first (and checks that the global batch splits over it), and every rank
    takes rank 0's folder (their clocks may disagree on the name)."""
    from foresight.train import distributed

    if getattr(args, "allow_changes", False) and not args.resume:
        raise ForesightError("--allow-changes applies to --resume only; add --resume, or drop --allow-changes")
    if args.resume and args.out is None:
        raise ForesightError("--resume needs --out RUN_FOLDER (the folder of the run to continue)")
    distributed.init(recipe.train)
    out = args.out or Path("runs") / f"{recipe.task}-{recipe.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(distributed.agree(str(out)))
