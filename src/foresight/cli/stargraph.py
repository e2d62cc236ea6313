"""``foresight stargraph [run RECIPE | report FOLDER | generate ...]``: the star-graph task."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from foresight.cli.common import Parser, add_run_options, run_recipe
from foresight.errors import ForesightError

DEFAULT_RECIPE = "demo"
FULL_SCHEDULE = "train.early_stop_metric=null"  # what --full-schedule means


def register(sub) -> None:
    sg = sub.add_parser("stargraph", help="the star-graph path-finding task (default: the CPU demo)",
                        description="Star-graph path finding (TOP paper §5.3). With no action: run the demo "
                        "recipe, training NTP, TOP, MTP and DS-MTP and comparing their exact-match accuracy.")
    sg.set_defaults(func=_run, recipe=DEFAULT_RECIPE, overrides=[], runs=None, out=None, resume=False, seeds=None,
                    results=None, full_schedule=False, skip_existing=False, time_limit=None,
                    overwrite=False, allow_changes=False)
    actions = sg.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    run = actions.add_parser("run", help="train and evaluate the runs of a recipe",
                             description="Train every run (objective set) of a star-graph recipe and compare them.")
    run.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                     help="recipe name in configs/stargraph/ (demo, smoke, paper, paper_budget) or a .yaml path "
                          "(default: demo)")
    add_run_options(run)
    run.add_argument("--seeds", "--seed", dest="seeds", type=_seed_list, metavar="S[,S...]",
                     help="train every run once per seed, e.g. 0,1,2 (sets train.seed: model initialisation and "
                          "batch order; the data set, stargraph.seed, stays fixed)")
    run.add_argument("--results", type=Path, metavar="DIR",
                     help="also write one JSON per finished (run, seed) cell into DIR, e.g. results/stargraph")
    run.add_argument("--full-schedule", action="store_true",
                     help=f"train every step of the schedule: no early stopping (--set {FULL_SCHEDULE})")
    run.add_argument("--skip-existing", action="store_true",
                     help="with --results: do not run a cell whose JSON is already in DIR")
    run.add_argument("--time-limit", type=float, metavar="SECONDS",
                     help="stop before this many seconds of wall-clock: a cell that would not finish in time is "
                          "not started, one still running at the limit stops unrecorded")
    run.set_defaults(func=_run)
    rep = actions.add_parser("report", help="table and plot from a folder of per-cell result JSONs",
                             description="Read every result JSON in FOLDER (written by `stargraph run --results`) "
                             "and write FOLDER/README.md (our exact match beside the TOP paper's Table 5, the "
                             "command of every cell) and FOLDER/exact_match.png (test exact match vs step).")
    rep.add_argument("folder", type=Path, help="folder of result JSONs, e.g. results/stargraph")
    rep.set_defaults(func=_report)
    gen = actions.add_parser("generate", help="write examples in the original text format",
                             description="Generate star-graph examples, one per line, in the original format.")
    gen.add_argument("--deg", type=int, required=True, help="d: number of arms")
    gen.add_argument("--path", type=int, required=True, help="l: nodes per arm, the source included")
    gen.add_argument("--nodes", type=int, required=True, help="N: node labels 0..N-1")
    gen.add_argument("--count", type=int, required=True, help="number of examples")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--out", type=Path, required=True, help="output file")
    gen.set_defaults(func=_generate)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers, got {text!r}")
    return seeds


def cell_command(args: argparse.Namespace, run: str, seed: int) -> str:
    """The command line that reproduces one (run, seed) cell of this invocation."""
    parts = ["foresight", "stargraph", "run", args.recipe, "--runs", run, "--seeds", str(seed)]
    for item in args.overrides:
        parts += ["--set", item]
    if args.full_schedule:
        parts.append("--full-schedule")
    if args.results is not None:
        parts += ["--results", str(args.results)]
    return shlex.join(parts)


def _run(args: argparse.Namespace) -> None:
    if args.skip_existing and args.results is None:
        raise ForesightError("--skip-existing needs --results DIR (the folder whose cells are checked)")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ForesightError(f"--time-limit must be > 0 seconds, got {args.time_limit:g}")
    run_recipe(args.recipe, args, "stargraph", task="stargraph",
               overrides=[FULL_SCHEDULE] if args.full_schedule else [],
               seeds=args.seeds, results_dir=args.results, skip_existing=args.skip_existing,
               cell_command=lambda run, seed: cell_command(args, run, seed), time_limit_s=args.time_limit)


def _report(args: argparse.Namespace) -> None:
    from foresight.tasks.stargraph_report import write_report

    readme, plot = write_report(args.folder)
    print(readme.read_text())
    print(f"wrote {readme} and {plot}")


def _generate(args: argparse.Namespace) -> None:
    from foresight.data.stargraph import StarGraphSpec, generate, write_examples
    from foresight.model.limits import MAX_EXAMPLES, MAX_VOCAB, check_int

    for name, value, low in (("--deg", args.deg, 1), ("--path", args.path, 2), ("--nodes", args.nodes, 1)):
        check_int(value, name, low, MAX_VOCAB)
    spec = StarGraphSpec(args.deg, args.path, args.nodes).validate()
    check_int(args.count, "--count", 1, MAX_EXAMPLES)  # generated in memory before writing
    write_examples(args.out, generate(spec, args.count, args.seed))
    print(f"wrote {args.count} G({args.deg},{args.path}) examples (N={args.nodes}, seed {args.seed}) to {args.out}")
