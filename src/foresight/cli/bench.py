"""``foresight bench stargraph GRID`` and ``foresight bench report DIR``: the objective benchmark (issue 24)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from foresight.cli.common import Parser
from foresight.cli.stargraph import _seed_list
from foresight.errors import ForesightError


def register(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: star-graph graphs x objectives x seeds, and their leaderboard",
                       description="The objective benchmark: run a grid of star graphs x objectives x seeds "
                       "(configs/bench/) and write a leaderboard.")
    b.set_defaults(func=lambda args: b.print_help())
    actions = b.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    sg = actions.add_parser("stargraph", help="run a grid of star-graph cells and write its leaderboard",
                            description="Train every (graph, objective, seed) cell of a grid file, side by side "
                            "over the CPU cores, one JSON per cell under RESULTS/<graph>/, then write the "
                            "leaderboard RESULTS/README.md and RESULTS/exact_match.png. Resumable: run the same "
                            "command again and only missing cells run (a stopped cell continues from its "
                            "checkpoint). Ctrl-C or SIGTERM ends the running cells with a final evaluation "
                            "(their JSON is marked -partial) and writes the leaderboard of what finished.")
    sg.add_argument("grid", help="grid name in configs/bench/ (g24, g25_50, g34) or a .yaml path")
    sg.add_argument("--only", action="append", metavar="GRAPH[/OBJECTIVE]",
                    help="run only these cells, e.g. g24_10/top or '*/fsp' (repeatable)")
    sg.add_argument("--seeds", type=_seed_list, metavar="S[,S...]",
                    help="run only these seeds of the selected cells")
    sg.add_argument("--jobs", type=int, metavar="N",
                    help="cells trained side by side (0 = one per CPU core; default: the recipe's stargraph.jobs)")
    sg.add_argument("--results", type=Path, metavar="DIR", help="default: results/benchmark/<grid>")
    sg.add_argument("--out", type=Path, metavar="DIR",
                    help="run folders (checkpoints, logs), one per graph (default: runs/bench-<grid>)")
    sg.add_argument("--reuse", action="append", type=Path, default=[], metavar="DIR",
                    help="a folder of cells run before with `foresight stargraph run --results DIR`: a missing cell "
                         "found there under the same name and with the same settings is copied in, not rerun "
                         "(repeatable)")
    sg.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="stop before this many seconds of wall-clock (a cell that would not finish is not started; "
                         "one still running at the limit ends with a partial result)")
    sg.add_argument("--dry-run", action="store_true",
                    help="list the cells, their status and estimated CPU time, and run nothing")
    sg.set_defaults(func=_stargraph)
    rep = actions.add_parser("report", help="leaderboard from a folder of star-graph cell JSONs",
                             description="Read DIR/*.json and DIR/<graph>/*.json (cells of `foresight bench "
                             "stargraph` or `foresight stargraph run --results`) and write DIR/README.md and "
                             "DIR/exact_match.png.")
    rep.add_argument("folder", type=Path, help="e.g. results/benchmark/g24")
    rep.set_defaults(func=_report)


def cell_command(grid: str, results: Path, default_results: bool, graph: str, objective: str, seed: int) -> str:
    parts = ["foresight", "bench", "stargraph", grid, "--only", f"{graph}/{objective}", "--seeds", str(seed)]
    if not default_results:
        parts += ["--results", str(results)]
    return shlex.join(parts)


def _stargraph(args: argparse.Namespace) -> None:
    from foresight.tasks.bench import estimate, load_grid, plan, plan_table, reuse_cells, run_grid, select
    from foresight.tasks.bench_report import write_leaderboard

    if args.jobs is not None and not 0 <= args.jobs <= 1024:
        raise ForesightError(f"--jobs must be in 0 .. 1024 (0 = one per CPU core), got {args.jobs}")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ForesightError(f"--time-limit must be > 0 seconds, got {args.time_limit:g}")
    grid = select(load_grid(args.grid), args.only, args.seeds)
    results = args.results or Path("results") / "benchmark" / grid.name
    extra = [] if args.jobs is None else [f"stargraph.jobs={args.jobs}"]
    plans = plan(grid, results, extra, args.reuse)
    if args.dry_run:
        import os

        rates = estimate(plans)
        jobs = max((gp.recipe.task_config.jobs for gp in plans), default=1) or (os.cpu_count() or 1)
        print(f"grid {grid.path}: results in {results}")
        print(plan_table(plans, jobs, rates))
        return
    for c in reuse_cells(plans):
        print(f"reused {c.source} -> {c.file}")
    cells = [c for gp in plans for c in gp.cells]
    print(f"grid {grid.path}: {len(cells)} cells, {sum(c.status == 'done' for c in cells)} done, "
          f"{sum(c.status == 'partial' for c in cells)} partial (continued from their checkpoints), "
          f"{sum(c.status == 'to run' for c in cells)} to run; results in {results}")
    finished = run_grid(grid, plans, args.out or Path("runs") / f"bench-{grid.name}", time_limit_s=args.time_limit,
                        cell_command=lambda g, o, s: cell_command(args.grid, results, args.results is None, g, o, s))
    if not any(results.glob("*/*.json")):
        print("no cell finished: no leaderboard written")
        return
    readme, plot = write_leaderboard(results)
    print(readme.read_text())
    print(f"wrote {readme} and {plot}" + ("" if finished else
          "; stopped before every cell finished: run the same command again to continue"))


def _report(args: argparse.Namespace) -> None:
    from foresight.tasks.bench_report import write_leaderboard

    readme, plot = write_leaderboard(args.folder)
    print(readme.read_text())
    print(f"wrote {readme} and {plot}")
