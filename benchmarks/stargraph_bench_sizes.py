"""Which model fits the benchmark's CPU budget (issue 24 item 3): seconds per training step of candidate model sizes
on a star graph, and the steps each would train in a budget of CPU-minutes per run (one cell per core).

Each candidate is timed by the real command (`foresight stargraph run <recipe> --set ... --set train.stop_after=K`,
one process, one thread), in rounds A, B, C, A, B, C, ... so every size sees the same machine load; a step's time is
the median of the run's logged training intervals (compilation and evaluation excluded: ``tokens_per_s`` of its
result.json), and the table gives the median over rounds. Default: G(2,5) with 50 node labels (the TOP paper's v2
setting, the authors' fork: 6 layers, width 384) on the demo recipe's schedule (batch 256), TOP's objectives.

    OMP_NUM_THREADS=1 python benchmarks/stargraph_bench_sizes.py --rounds 2 --out results/benchmark/g25-sizes.md

Prints the table and writes it as markdown with the machine, versions, date and this command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> model overrides, smallest first. Our blocks are SwiGLU (three MLP matrices), so the authors' GPT-2 MLP of
# 4 x 384 (two matrices) is matched in parameters by an intermediate size of 1,024: 10.6M in the six blocks, as theirs.
CANDIDATES = {
    "d64-L3": {"hidden_size": 64, "n_layers": 3, "n_heads": 4, "intermediate_size": 192},
    "d96-L4": {"hidden_size": 96, "n_layers": 4, "n_heads": 4, "intermediate_size": 288},
    "d128-L4": {"hidden_size": 128, "n_layers": 4, "n_heads": 4, "intermediate_size": 384},
    "authors-d384-L6": {"hidden_size": 384, "n_layers": 6, "n_heads": 6, "intermediate_size": 1024},
}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads; not its compile workers), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def time_one(name: str, model: dict, args, work: Path) -> dict:
    """One `foresight stargraph run` of ``steps`` steps, logging every ``steps / 10``. While it trains, each new
    training line of its metrics.jsonl is paired with the process's CPU time at that moment; CPU seconds per step
    = the CPU time between the second logged line and the last over the steps between them (the first interval,
    with compilation, is left out; on a loaded machine CPU time, unlike wall-clock, does not count the time other
    processes held the core). Also the wall-clock rate the run logs itself (median interval)."""
    steps = args.authors_steps if name.startswith("authors") else args.steps
    every = max(1, steps // 10)
    sets = [f"stargraph.deg={args.deg}", f"stargraph.path={args.path}", f"stargraph.nodes={args.nodes}",
            "stargraph.train_size=5000", "stargraph.test_size=20", "stargraph.eval_batch_size=20", "stargraph.jobs=1",
            f"train.stop_after={steps}", "train.eval_every=0", f"train.log_every={every}",
            "train.tensorboard=false", *(f"model.{k}={v}" for k, v in model.items())]
    cmd = [sys.executable, "-m", "foresight", "stargraph", "run", args.recipe, "--runs", args.run, "--out",
           str(work / name), "--overwrite", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    metrics = work / name / args.run / "metrics.jsonl"
    seen: list[tuple[int, float]] = []  # (step of a training line, CPU seconds when it was seen)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:
            cpu = _cpu_seconds(proc.pid)
            if metrics.is_file() and cpu is not None:
                lines = [json.loads(x) for x in metrics.read_text().splitlines() if '"kind": "train"' in x]
                if lines and (not seen or lines[-1]["step"] > seen[-1][0]):
                    seen.append((lines[-1]["step"], cpu))
            time.sleep(0.2)
        err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: {' '.join(cmd)} failed:\n{err[-2000:]}")
    result = json.loads((work / name / args.run / "result.json").read_text())
    (s0, c0), (s1, c1) = seen[1], seen[-1]
    tokens_per_step = result["tokens"] / result["steps"]  # batch x sequence length
    return {"params": result["params"], "s_per_step": tokens_per_step / result["tokens_per_s"],
            "cpu_s_per_step": (c1 - c0) / (s1 - s0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="demo")
    p.add_argument("--run", default="top", help="run of the recipe whose objectives are timed (default top)")
    p.add_argument("--deg", type=int, default=2)
    p.add_argument("--path", type=int, default=5)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--steps", type=int, default=60, help="steps timed per candidate and round")
    p.add_argument("--authors-steps", type=int, default=10, help="steps timed for the authors' size (slow on a CPU)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget-min", type=float, default=60.0, help="CPU-minutes per run")
    p.add_argument("--only", help="comma-separated candidate names")
    p.add_argument("--out", type=Path, help="also write the table as markdown here")
    args = p.parse_args()
    names = [n for n in CANDIDATES if not args.only or n in args.only.split(",")]
    rows: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in names:  # interleaved: A, B, C, A, B, C
                rows[n].append(time_one(n, CANDIDATES[n], args, Path(tmp)))
                print(f"round {r + 1} {n}: {rows[n][-1]['cpu_s_per_step']:.3f} CPU-s/step, "
                      f"{rows[n][-1]['s_per_step']:.3f} s/step wall-clock", flush=True)
    lines = [f"CPU seconds per training step, G({args.deg},{args.path}) with N = {args.nodes}, recipe {args.recipe} "
             f"(batch 256), objectives of run {args.run!r}, one process with one thread; median over {args.rounds} "
             f"interleaved rounds; steps that fit {args.budget_min:g} CPU-minutes (evaluation not counted). "
             "CPU-s / step: the training process's CPU time between its second and last logged intervals over "
             "the steps between them (compilation left out; robust to other jobs on the cores); wall-clock: the "
             "run's own median logged interval (inflated on shared cores).", "",
             "| model | parameters | CPU-s / step (median) | per round | wall-clock s / step (median) | steps in "
             "budget (CPU time) |", "|---|---|---|---|---|---|"]
    for n in names:
        cpu = [r["cpu_s_per_step"] for r in rows[n]]
        med = statistics.median(cpu)
        wall = statistics.median(r["s_per_step"] for r in rows[n])
        lines.append(f"| {n} ({CANDIDATES[n]}) | {rows[n][0]['params'] / 1e6:.2f}M | {med:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in cpu)} | {wall:.3f} | {int(args.budget_min * 60 / med):,} |")
    from foresight.environment import describe

    env = describe("cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Machine: {env['device']}, {os.cpu_count()} cores, load average {load:.1f} at the end (a shared "
              f"machine: other jobs ran beside it); torch {env['torch']}, Python {env['python']}, foresight "
              f"{env['foresight']}, commit {env['git_commit']}; {env['date']}.", "",
              "Command: `OMP_NUM_THREADS=1 python " + " ".join(["benchmarks/stargraph_bench_sizes.py", *sys.argv[1:]])
              + "`"]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
