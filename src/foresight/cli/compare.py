"""``foresight compare RUN_DIR...``: a table and a figure of the runs' training and validation curves."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("compare", help="table and plot of several runs' curves",
                       description="Compare runs (folders with metrics.jsonl, or folders holding such run folders): "
                       "writes compare.md (one row per run) and compare.png (training and validation loss per "
                       "objective) and prints the table.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders, or folders of run folders")
    p.add_argument("--out", type=Path, help="where to write compare.md and compare.png (default: the runs' common "
                   "parent folder, else the current folder)")
    p.add_argument("--x", choices=("step", "tokens"), default="step", help="x axis of the curves (default: step)")
    p.add_argument("--smooth", type=float, help="EMA weight of the training curves in [0, 1), 0 = raw (default: "
                   "about 1/25 of each curve, e.g. 0.9 for 250 logged steps)")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> None:
    from foresight.compare import write_comparison

    text, table_path, png = write_comparison(args.runs, args.out, x=args.x, smooth=args.smooth)
    print(text)
    print(f"wrote {table_path} and {png}")
