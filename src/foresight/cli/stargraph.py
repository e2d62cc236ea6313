"""``foresight stargraph [run RECIPE | generate ...]``: the star-graph task."""

from __future__ import annotations

import argparse
from pathlib import Path

from foresight.cli.common import Parser, add_run_options, run_recipe
from foresight.errors import ForesightError

DEFAULT_RECIPE = "demo"


def register(sub) -> None:
    sg = sub.add_parser("stargraph", help="the star-graph path-finding task (default: the CPU demo)",
                        description="Star-graph path finding (TOP paper §5.3). With no action: run the demo "
                        "recipe, training NTP, TOP, MTP and DS-MTP and comparing their exact-match accuracy.")
    sg.set_defaults(func=_run, recipe=DEFAULT_RECIPE, overrides=[], runs=None, out=None, resume=False)
    actions = sg.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    run = actions.add_parser("run", help="train and evaluate the runs of a recipe",
                             description="Train every run (objective set) of a star-graph recipe and compare them.")
    run.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                     help="recipe name in configs/stargraph/ (demo, smoke, paper) or a .yaml path (default: demo)")
    add_run_options(run)
    run.set_defaults(func=_run)
    gen = actions.add_parser("generate", help="write examples in the original text format",
                             description="Generate star-graph examples, one per line, in the original format.")
    gen.add_argument("--deg", type=int, required=True, help="d: number of arms")
    gen.add_argument("--path", type=int, required=True, help="l: nodes per arm, the source included")
    gen.add_argument("--nodes", type=int, required=True, help="N: node labels 0..N-1")
    gen.add_argument("--count", type=int, required=True, help="number of examples")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--out", type=Path, required=True, help="output file")
    gen.set_defaults(func=_generate)


def _run(args: argparse.Namespace) -> None:
    run_recipe(args.recipe, args, "stargraph")


def _generate(args: argparse.Namespace) -> None:
    from foresight.data.stargraph import StarGraphSpec, generate, write_examples

    spec = StarGraphSpec(args.deg, args.path, args.nodes).validate()
    if args.count < 1:
        raise ForesightError(f"--count must be >= 1, got {args.count}")
    write_examples(args.out, generate(spec, args.count, args.seed))
    print(f"wrote {args.count} G({args.deg},{args.path}) examples (N={args.nodes}, seed {args.seed}) to {args.out}")
