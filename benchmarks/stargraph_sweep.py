"""The CPU recipe search of issue 13: where does TOP solve a star graph that NTP cannot, on 2 CPU cores?

Every configuration is ``configs/stargraph/cpu_sweep.yaml`` plus ``--set`` overrides; each (configuration, run,
seed) cell is one ``foresight stargraph run`` process on one core (``OMP_NUM_THREADS=1``), ``--jobs`` of them
side by side. A finished cell becomes one JSON row in ``results/stargraph-cpu/<stage>/`` (final exact match,
valid-arm rate, v1 accuracy, steps, wall-clock, first evaluation step at >= 90 % / 95 % exact match, the
curve, machine, versions, date, command), and ``table.md`` there is rebuilt from all rows after every cell.

    python benchmarks/stargraph_sweep.py --stage prune --steps 2000 --seeds 0          # every configuration
    python benchmarks/stargraph_sweep.py --stage prune --only base,b128 --runs ntp,top  # a subset
    python benchmarks/stargraph_sweep.py --stage prune --table                          # rebuild table.md only

Rows already in the stage folder are skipped, so an interrupted sweep continues where it stopped. Wall-clock
is that of a shared 2-core machine (other jobs ran beside the sweep): compare steps, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "cpu_sweep"

# name -> (overrides, what it tests). The base is the setting: G(2,4), N = 10, d 64, 3 layers,
# batch 256, lr 1e-2 -> 1e-3, warm-up 100.
CONFIGS: dict[str, tuple[list[str], str]] = {
    "base": ([],
        "the setting of the issue"),
    "b128": (["train.batch_size=128"],
        "half the batch"),
    "lr2e-2": (["train.lr=2e-2", "train.min_lr=2e-3"],
        "twice the lr"),
    "b128-lr2e-2": (["train.batch_size=128", "train.lr=2e-2", "train.min_lr=2e-3"],
        "half the batch, twice the lr"),
    "d32": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2"],
        "narrower"),
    "d32-L4": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2", "model.n_layers=4"],
        "narrower, 4 layers"),
    "d32-h4": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=4"],
        "narrower, 4 heads of 8"),
    "d32-lr2e-2": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2", "train.lr=2e-2",
                    "train.min_lr=2e-3"],
        "narrower, twice the lr"),
    "d32-N8": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2", "stargraph.nodes=8"],
        "narrower, 8 labels"),
    "d48": (["model.hidden_size=48", "model.intermediate_size=144", "model.n_heads=4"],
        "three quarters of the width"),
    "d32-b128": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2", "train.batch_size=128"],
        "narrower, half the batch"),
    "d16-L4": (["model.hidden_size=16", "model.intermediate_size=48", "model.n_heads=2", "model.n_layers=4"],
        "tiny width, 4 layers"),
    "top-w2": (["runs.top=[{name: ntp}, {name: top, weight: 2.0, window: 4096}]"],
        "TOP weight 2"),
    "L2": (["model.n_layers=2"],
        "2 layers"),
    "b64-lr5e-3": (["train.batch_size=64", "train.lr=5e-3", "train.min_lr=5e-4"],
        "a quarter of the batch"),
    "lr3e-2": (["train.lr=3e-2", "train.min_lr=3e-3"],
        "three times the lr"),
    "top-only": (["runs.top=[{name: top, window: 4096}]"],
        "TOP without NTP"),
    "N8": (["stargraph.nodes=8"],
        "8 labels (7 needed)"),
    "d96": (["model.hidden_size=96", "model.intermediate_size=288", "model.n_heads=4"],
        "wider"),
    "N15": (["stargraph.nodes=15"],
        "15 labels"),
    "b128-lr5e-3": (["train.batch_size=128", "train.lr=5e-3", "train.min_lr=5e-4"],
        "half the batch, half the lr"),
    "lr5e-3": (["train.lr=5e-3", "train.min_lr=5e-4"],
        "half the lr"),
    "warm20": (["train.warmup_steps=20"],
        "short warm-up"),
    "const-lr": (["train.min_lr=1e-2"],
        "no decay"),
    "noclip": (["train.grad_clip=0"],
        "no gradient clipping"),
    "wd0.1": (["train.weight_decay=0.1"],
        "more weight decay"),
    "L2-top-w2": (["model.n_layers=2", "runs.top=[{name: ntp}, {name: top, weight: 2.0, window: 4096}]"],
        "2 layers, TOP weight 2"),
    "d32-L2": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2", "model.n_layers=2"],
        "narrower, 2 layers"),
    "L2-lr2e-2": (["model.n_layers=2", "train.lr=2e-2", "train.min_lr=2e-3"], "2 layers, twice the lr"),
    "L1": (["model.n_layers=1"], "1 layer"),
    "L4-d48": (["model.n_layers=4", "model.hidden_size=48", "model.intermediate_size=144", "model.n_heads=4"],
        "deeper, narrower"),
    "L6-d32": (["model.n_layers=6", "model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2"],
        "deep and narrow"),
    "top-w4": (["runs.top=[{name: ntp}, {name: top, weight: 4.0, window: 4096}]"], "TOP weight 4"),
    "d32-top-w2": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2",
                    "runs.top=[{name: ntp}, {name: top, weight: 2.0, window: 4096}]"],
        "narrower, TOP weight 2"),
    "d32-top-w4": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2",
                    "runs.top=[{name: ntp}, {name: top, weight: 4.0, window: 4096}]"],
        "narrower, TOP weight 4"),
    "d32-top-only": (["model.hidden_size=32", "model.intermediate_size=96", "model.n_heads=2",
                      "runs.top=[{name: top, window: 4096}]"], "narrower, TOP without NTP"),
    "top-w2-lr2e-2": (["train.lr=2e-2", "train.min_lr=2e-3",
                       "runs.top=[{name: ntp}, {name: top, weight: 2.0, window: 4096}]"],
        "TOP weight 2, twice the lr"),
    "top-w2-b128": (["train.batch_size=128", "runs.top=[{name: ntp}, {name: top, weight: 2.0, window: 4096}]"],
        "TOP weight 2, half the batch"),
    "top-w0.5": (["runs.top=[{name: ntp}, {name: top, weight: 0.5, window: 4096}]"],
        "TOP weight 0.5"),
    "top-window2": (["runs.top=[{name: ntp}, {name: top, window: 2}]"],
        "TOP ranks only the next 2 tokens"),
    "top-paper-scores": (["runs.top=[{name: ntp}, {name: top, window: 4096, scores: paper}]"],
        "fp16-rounded W - d scores (d = 0 and 1 tie)"),
    "top-late": (["runs.top=[{name: ntp}, {name: top, window: 4096, weight: [[{step: 0}, 0.0], [{step: 300}, 1.0]]}]"],
        "TOP switched on at step 300 (the shortcut first)"),
    "top-late-w2": ([("runs.top=[{name: ntp}, {name: top, window: 4096, "
                      "weight: [[{step: 0}, 0.0], [{step: 300}, 2.0]]}]")],
        "TOP weight 2 switched on at step 300"),
    "top-late500-w2": ([("runs.top=[{name: ntp}, {name: top, window: 4096, "
                      "weight: [[{step: 0}, 0.0], [{step: 500}, 2.0]]}]")],
        "TOP weight 2 switched on at step 500"),
    "ntp-late": (["runs.top=[{name: ntp, weight: [[{step: 0}, 0.0], [{step: 300}, 1.0]]}, {name: top, window: 4096}]"],
        "NTP switched on at step 300 (TOP first)"),
    "N20": (["stargraph.nodes=20"],
        "20 labels"),
    "g25": (["stargraph.path=5", "stargraph.nodes=12"],
        "G(2,5), 12 labels"),
    "g25-top-w2": (["stargraph.path=5", "stargraph.nodes=12",
                    "runs.top=[{name: ntp}, {name: top, weight: 2.0, window: 4096}]"],
        "G(2,5), 12 labels, TOP weight 2"),
    "g34": (["stargraph.deg=3", "stargraph.nodes=13"],
        "G(3,4), 13 labels"),
    "g33": (["stargraph.deg=3", "stargraph.path=3", "stargraph.nodes=10"],
        "G(3,3), 10 labels"),
    "first500": (["train.stop_after=500"],
        "the first 500 steps of the recipe's schedule (which shortcut NTP has formed: it does not change later)"),
    "g25-first500": (["stargraph.path=5", "stargraph.nodes=12", "train.stop_after=500"],
        "G(2,5), 12 labels, the first 500 steps of the schedule"),
    "N20-first500": (["stargraph.nodes=20", "train.stop_after=500"],
        "20 labels, the first 500 steps of the schedule"),
    "lr3e-3-first500": (["train.lr=3.0e-3", "train.min_lr=3.0e-4", "train.stop_after=500"],
        "lr 3e-3, the first 500 steps of the schedule"),
    "warm400-first500": (["train.warmup_steps=400", "train.stop_after=500"],
        "warm-up 400 steps, the first 500 steps of the schedule"),
    "d48-first500": (["model.hidden_size=48", "model.intermediate_size=144", "train.stop_after=500"],
        "three quarters of the width, the first 500 steps of the schedule"),
    "train50k": (["stargraph.train_size=50000"],
        "50k training graphs"),
    "warm400": (["train.warmup_steps=400"],
        "long warm-up"),
}


def cell_steps(name: str, steps: int) -> int:
    """``steps`` counts batches of 256: a configuration with another batch size gets the same examples."""
    batch = next((int(o.split("=")[1]) for o in CONFIGS[name][0] if o.startswith("train.batch_size=")), 256)
    return steps * 256 // batch


def cell_command(name: str, run: str, seed: int, steps: int, out: Path, recipe: str = RECIPE,
                 eval_every: int | None = None, results: Path | None = None) -> list[str]:
    """The ``foresight stargraph run`` command of one cell; ``results``: also write the cell's JSON there (the
    layout of ``stargraph run --results``, e.g. a cpu_solve results folder)."""
    overrides, _ = CONFIGS[name]
    steps = cell_steps(name, steps)
    cmd = [sys.executable, "-m", "foresight", "stargraph", "run", recipe, "--runs", run, "--seeds", str(seed),
           "--out", str(out), "--set", f"train.steps={steps}",
           "--set", f"train.eval_every={eval_every or max(1, steps // 8)}", "--set", "train.tensorboard=false"]
    for item in overrides:
        cmd += ["--set", item]
    if results is not None:
        cmd += ["--results", str(results)]
    return cmd


def first_step(curve: list, threshold: float) -> int | None:
    return next((step for step, em in curve if em >= threshold), None)


def run_cell(name: str, run: str, seed: int, args) -> dict | None:
    stage_dir = args.out / args.stage
    row_path = stage_dir / f"{name}-{run}-seed{seed}.json"
    if row_path.is_file():
        return None
    out = ROOT / "runs" / "sweep" / args.stage / name / f"{run}-seed{seed}"  # one run folder per cell
    cmd = cell_command(name, run, seed, args.steps, out, args.recipe, args.eval_every, args.results)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    t0 = time.time()
    log = out / f"{run}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
    result_path = out / f"{run}-seed{seed}" / "result.json"
    if proc.returncode != 0 or not result_path.is_file():
        print(f"{name} {run} seed {seed}: failed (exit {proc.returncode}), see {log}", flush=True)
        return None
    r = json.loads(result_path.read_text())
    row = {
        "config": name, "recipe": args.recipe, "overrides": CONFIGS[name][0], "about": CONFIGS[name][1], "run": run,
        "objective": r["objective"], "seed": seed, "graph": r["graph"], "params": r["params"],
        "batch_size": r["batch_size"], "steps": r["steps"], "schedule_steps": r["schedule_steps"],
        "partial": r.get("partial", False), "final_exact_match": r["final_exact_match"],
        "valid_arm": r["valid_arm"], "v1_acc": r["v1_acc"], "steps_to_90": first_step(r["curve"], 0.90),
        "steps_to_95": first_step(r["curve"], 0.95), "wall_clock_s": r["wall_clock_s"],
        "process_wall_s": round(time.time() - t0, 1), "tokens_per_s": r["tokens_per_s"],
        "curve": r["curve"], "valid_curve": [[e["step"], e["valid_arm"]] for e in r["evals"]],
        "device_name": r.get("device_name"), "torch": r.get("torch"), "commit": r.get("git_commit"),
        "date": r.get("date"), "command": shlex.join(["python", *cmd[1:]]),
    }
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = row_path.with_name(f".{row_path.name}.tmp")
    tmp.write_text(json.dumps(row, indent=2) + "\n")
    tmp.replace(row_path)
    print(f"{name} {run} seed {seed}: exact {row['final_exact_match']:.1%} valid {row['valid_arm']:.1%} "
          f"to-95 {row['steps_to_95']} ({row['wall_clock_s']:.0f} s)", flush=True)
    return row


def _steps(row: dict) -> str:
    """Steps trained; a cell stopped early (SIGTERM: a partial result) shows its schedule too."""
    if row.get("partial"):
        return f"{row['steps']} of {row['schedule_steps']} (stopped)"
    return str(row["steps"])


def write_table(stage_dir: Path) -> Path:
    rows = [json.loads(p.read_text()) for p in sorted(stage_dir.glob("*.json"))]
    rows.sort(key=lambda r: (list(CONFIGS).index(r["config"]) if r["config"] in CONFIGS else 999, r["run"], r["seed"]))
    pct = lambda x: "—" if x is None else f"{x:.1%}"  # noqa: E731
    recipes = sorted({r.get("recipe", RECIPE) for r in rows}) or [RECIPE]  # rows before part 2 have no "recipe"
    bases = ", ".join(f"`configs/stargraph/{name}.yaml`" for name in recipes)
    lines = [f"# Star-graph CPU sweep, stage `{stage_dir.name}` ({len(rows)} cells)", "",
             f"Base: {bases} "
             "(G(2,4), N = 10, d 64, 3 layers, batch 256, lr 1e-2; each row's overrides in its JSON). "
             "One process per cell on one core of a shared 2-core VM (other jobs ran beside it: compare steps, "
             "not seconds). Exact match and valid-arm rate on 500 held-out graphs, greedy decoding.", "",
             "| config | what | run | seed | params | batch | steps | exact match | valid arm | v1 | first step ≥ 90 % "
             "| first step ≥ 95 % | wall-clock s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['about']} | {r['run']} | {r['seed']} | {r['params'] / 1e6:.2f}M | "
                     f"{r['batch_size']} | {_steps(r)} | {pct(r['final_exact_match'])} | {pct(r['valid_arm'])} | "
                     f"{pct(r['v1_acc'])} | {r['steps_to_90'] or '—'} | {r['steps_to_95'] or '—'} | "
                     f"{r['wall_clock_s']:.0f} |")
    if rows:
        r = rows[0]
        lines += ["", f"Machine: {r['device_name']}; torch {r['torch']}; commit {r['commit']}; first row {r['date']}. "
                  "Each row's JSON holds its command and curves."]
    path = stage_dir / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", default="prune", help="sub-folder of --out for this sweep's rows")
    p.add_argument("--steps", type=int, default=2000,
                   help="train.steps at batch 256 (other batch sizes: the same number of examples)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--runs", default="top", help="comma-separated runs of the recipe (ntp, top, mtp2, dsmtp2)")
    p.add_argument("--only", help="comma-separated configuration names (default: all)")
    p.add_argument("--recipe", default=RECIPE,
                   help="base recipe of every configuration (e.g. cpu_solve: cells at the solve setting)")
    p.add_argument("--eval-every", type=int, help="train.eval_every (default: steps // 8)")
    p.add_argument("--results", type=Path, help="also write each cell's JSON into this stargraph results folder")
    p.add_argument("--jobs", type=int, default=2, help="cells side by side, one core each")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per cell")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "stargraph-cpu")
    p.add_argument("--table", action="store_true", help="only rebuild table.md")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration {unknown[0]!r}; known: {', '.join(CONFIGS)}")
    if not args.table:
        cells = [(n, r, int(s)) for n in names for s in args.seeds.split(",") for r in args.runs.split(",")]
        with ThreadPoolExecutor(args.jobs) as pool:
            for _ in pool.map(lambda c: run_cell(*c, args), cells):
                write_table(args.out / args.stage)
    print(f"wrote {write_table(args.out / args.stage)}")


if __name__ == "__main__":
    main()
