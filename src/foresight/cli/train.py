"""``foresight train RECIPE``: train the runs of any recipe; its ``task:`` picks data and evaluation."""

from __future__ import annotations

from foresight.cli.common import add_run_options, run_recipe


def register(sub) -> None:
    tr = sub.add_parser("train", help="train the runs of any recipe",
                        description="Train from a recipe file (its 'task:' decides the data and evaluation).")
    tr.add_argument("recipe", help="a recipe .yaml path or name")
    add_run_options(tr)
    tr.set_defaults(func=lambda args: run_recipe(args.recipe, args))
