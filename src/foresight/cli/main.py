"""``foresight``: the command line. Every user error ends as one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from foresight import __version__
from foresight.errors import ForesightError

DEFAULT_STARGRAPH_RECIPE = "demo"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=200 (repeatable)")
    p.add_argument("--runs", help="comma-separated subset of the recipe's runs, e.g. ntp,top")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<task>-<recipe>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue each run from its newest checkpoint in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="foresight", description="Train language models with future-aware objectives "
                     "(TOP, MTP, DS-MTP) beside next-token prediction.")
    parser.add_argument("--version", action="version", version=f"foresight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sg = sub.add_parser("stargraph", help="the star-graph path-finding task (default: the CPU demo)",
                        description="Star-graph path finding (TOP paper §5.3). With no action: run the demo "
                        "recipe, training NTP, TOP, MTP and DS-MTP and comparing their exact-match accuracy.")
    sg_sub = sg.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    run = sg_sub.add_parser("run", help="train and evaluate the runs of a recipe",
                            description="Train every run (objective set) of a star-graph recipe and compare them.")
    run.add_argument("recipe", nargs="?", default=DEFAULT_STARGRAPH_RECIPE,
                     help="recipe name in configs/stargraph/ (demo, smoke, paper) or a .yaml path (default: demo)")
    _add_run_options(run)
    gen = sg_sub.add_parser("generate", help="write examples in the original text format",
                            description="Generate star-graph examples, one per line, in the original format.")
    gen.add_argument("--deg", type=int, required=True, help="d: number of arms")
    gen.add_argument("--path", type=int, required=True, help="l: nodes per arm, the source included")
    gen.add_argument("--nodes", type=int, required=True, help="N: node labels 0..N-1")
    gen.add_argument("--count", type=int, required=True, help="number of examples")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--out", type=Path, required=True, help="output file")

    tr = sub.add_parser("train", help="train the runs of any recipe",
                        description="Train from a recipe file (its 'task:' decides the data and evaluation).")
    tr.add_argument("recipe", help="a recipe .yaml path or name")
    _add_run_options(tr)
    return parser


def _default_out(task: str, recipe_path: Path) -> Path:
    return Path("runs") / f"{task}-{recipe_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_recipe(name: str, args, group: str) -> None:
    from foresight.tasks.recipe import load_recipe, select_runs
    from foresight.tasks.stargraph import run_stargraph

    recipe = load_recipe(name, args.overrides, group)
    runs = select_runs(recipe, args.runs)
    if args.resume and args.out is None:
        raise ForesightError("--resume needs --out RUN_FOLDER (the folder of the run to continue)")
    out = args.out or _default_out(recipe.task, recipe.path)
    run_stargraph(recipe, runs, out, resume=args.resume)


def _stargraph_generate(args) -> None:
    from foresight.data.stargraph import StarGraphSpec, generate, write_examples

    spec = StarGraphSpec(args.deg, args.path, args.nodes).validate()
    if args.count < 1:
        raise ForesightError(f"--count must be >= 1, got {args.count}")
    write_examples(args.out, generate(spec, args.count, args.seed))
    print(f"wrote {args.count} G({args.deg},{args.path}) examples (N={args.nodes}, seed {args.seed}) to {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "stargraph":
            if args.action == "generate":
                _stargraph_generate(args)
            else:
                if args.action is None:  # bare `foresight stargraph`: the demo with default options
                    args.recipe, args.overrides, args.runs, args.out, args.resume = DEFAULT_STARGRAPH_RECIPE, [], None, None, False
                _run_recipe(args.recipe, args, "stargraph")
        elif args.command == "train":
            _run_recipe(args.recipe, args, "")
        return 0
    except ForesightError as e:
        print(f"foresight: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("foresight: interrupted (checkpoints written so far are complete; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
