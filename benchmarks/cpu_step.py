"""The star-graph demo-size training step on CPU, old code against new, in one run (issue 13).

    python benchmarks/cpu_step.py                       # baseline b5cb8f2 vs this checkout; table + JSON
    python benchmarks/cpu_step.py --baseline HEAD~3 --steps 20 --rounds 3 --out runs/bench/cpu_step.json

Shapes: G(2,4), N = 10 (sequence 24, vocabulary 14), d 64, 3 layers, 4 heads, ff 192 (0.16M parameters),
batch 256; runs NTP and NTP + TOP (window 4096). The baseline's ``src/`` is exported with ``git archive`` and
every measurement runs in its own process (PYTHONPATH = that tree or this checkout's ``src/``), so both sides
are whole ``Trainer.train_step`` calls of their own code. Variants, each alternated with the others in every
round (a shared machine drifts; interleaving keeps the ratios fair):

- ``old``: the baseline, eager, 1 thread;
- ``new``: this checkout, eager, 1 thread;
- ``new+compile``: this checkout with ``train.compile=true`` (inductor C++ on CPU), 1 thread; its compile
  time (the first step, with an empty inductor cache) is reported separately;
- ``old 2 threads`` / ``new 2 threads``: eager with 2 intra-op threads (one process using both cores; the old
  main job's layout, training one objective after the other).

Steps/s is the median over rounds of (timed steps / seconds) after warm-up steps; "× old" the median over
rounds of the ratio to ``old`` in the same round (``--only`` picks variants, for more rounds on a busy
machine). "2 processes" is NTP and TOP started together, one process per core (eager, and compiled as
``train.compile: auto`` does for runs of 2,000 steps or more): the main job's layout, compared with the old
one (NTP then TOP, 2 threads) and with the old code started by hand the same way ("old 2 processes").
Losses: the first ``--steps`` per-step losses of each variant, from the same initialisation and batches,
against ``old``: max |Δ| / |loss| is printed (fp32 tolerance: < 1e-5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"ntp": [{"name": "ntp"}], "top": [{"name": "ntp"}, {"name": "top", "window": 4096}]}


def worker(spec: dict) -> dict:
    """One measurement in this process: ``spec`` = run, threads, compile, steps, warmup."""
    import torch

    torch.set_num_threads(spec["threads"])
    from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
    from foresight.model import ModelConfig
    from foresight.train.config import TrainConfig
    from foresight.train.lm import TrainableLM
    from foresight.train.trainer import Trainer

    graph = StarGraphSpec(2, 4, 10).validate()
    data = StarGraphData(generate(graph, 4096, 0), graph)
    model_cfg = ModelConfig(hidden_size=64, n_layers=3, n_heads=4, intermediate_size=192,
                            vocab_size=graph.vocab_size, max_seq_len=graph.seq_len + 1)
    torch.manual_seed(0)
    lm = TrainableLM(model_cfg, RUNS[spec["run"]])
    cfg = TrainConfig(steps=1000, batch_size=256, lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.01,
                      device="cpu", tensorboard=False, compile=spec["compile"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(lm, cfg, Path(run_dir), batch_fn=lambda step: data.batch(step, 256, 0), run_config={})
        t0 = time.perf_counter()
        losses = [trainer.train_step(data.batch(0, 256, 0))["loss"]]
        first = time.perf_counter() - t0
        for step in range(1, spec["warmup"]):
            losses.append(trainer.train_step(data.batch(step, 256, 0))["loss"])
        t0 = time.perf_counter()
        for step in range(spec["warmup"], spec["warmup"] + spec["steps"]):
            losses.append(trainer.train_step(data.batch(step, 256, 0))["loss"])
        seconds = time.perf_counter() - t0
    return {"steps_per_s": spec["steps"] / seconds, "first_step_s": first, "losses": losses}


def export_baseline(rev: str, into: Path) -> Path:
    """``git archive REV src`` unpacked into ``into``; returns the ``src`` folder."""
    blob = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def launch(src: Path, spec: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(spec["threads"])}
    if spec["compile"]:  # a fresh inductor cache: "first step s" is the compilation a fresh machine pays
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    return subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a measurement process failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="b5cb8f2", help="git revision of the old code (default: before issue 13)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variant (it compiles each round)")
    p.add_argument("--out", type=Path, help="also write the numbers as JSON")
    p.add_argument("--quick", action="store_true", help="only old and new on one thread (checks the script)")
    p.add_argument("--only", help="comma-separated variants to run (e.g. old,new,new+compile: more rounds for the "
                   "same CPU on a shared machine); default: all")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from foresight.environment import describe

    variants = {"old": (None, 1, False), "old 2 threads": (None, 2, False), "new": (ROOT / "src", 1, False),
                "new 2 threads": (ROOT / "src", 2, False)}
    if not args.no_compile:
        variants["new+compile"] = (ROOT / "src", 1, True)
    if args.quick:  # a check that the script works: old and new, one thread each
        variants = {k: v for k, v in variants.items() if k in ("old", "new")}
    compile_on = not args.no_compile and not args.quick
    pairs = [] if args.quick else (["old 2 processes", "new 2 processes"]
                                   + (["new+compile 2 processes"] if compile_on else []))
    if args.only:
        keep = args.only.split(",")
        unknown = sorted(set(keep) - {*variants, *pairs})
        if unknown or "old" not in keep:
            raise SystemExit(f"--only: unknown variants {unknown} (known: {', '.join([*variants, *pairs])}); "
                             f"'old' is needed as the reference")
        variants = {k: v for k, v in variants.items() if k in keep}
        pairs = [k for k in pairs if k in keep]
    results: dict = {(v, r): [] for v in [*variants, *pairs] for r in RUNS}
    with tempfile.TemporaryDirectory() as tmp:
        old_src = export_baseline(args.baseline, Path(tmp))
        for rnd in range(args.rounds):
            for run in RUNS:
                for name, (src, threads, compiled) in variants.items():
                    spec = {"run": run, "threads": threads, "compile": compiled, "steps": args.steps,
                            "warmup": args.warmup}
                    results[name, run].append(collect(launch(src or old_src, spec)))
                    print(f"round {rnd + 1} {run:>3} {name:<14} {results[name, run][-1]['steps_per_s']:6.2f} steps/s",
                          flush=True)
            # NTP and TOP at once, one process per core: the main job's layout (compiled, as auto does there).
            for name in pairs:
                src = old_src if name.startswith("old") else ROOT / "src"
                procs = {run: launch(src, {"run": run, "threads": 1, "compile": name.startswith("new+compile"),
                                           "steps": args.steps, "warmup": args.warmup}) for run in RUNS}
                for run, proc in procs.items():
                    results[name, run].append(collect(proc))

    med = {k: statistics.median(m["steps_per_s"] for m in v) for k, v in results.items()}
    # × old: the median over rounds of the ratio to old's steps/s in the same round (the load drifts between
    # rounds, far more than within one on a shared machine).
    ratio = {(name, run): statistics.median(m["steps_per_s"] / o["steps_per_s"]
                                            for m, o in zip(ms, results["old", run]))
             for (name, run), ms in results.items()}
    rel = {}
    for (name, run), ms in results.items():
        ref = results["old", run][0]["losses"]
        got = ms[0]["losses"]
        rel[name, run] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got, ref))
    env = describe("cpu")
    lines = [f"CPU training step, star graph G(2,4) N=10, d 64 × 3 layers, batch 256 ({env['device']}, torch "
             f"{env['torch']}, {env['date']}; baseline {args.baseline}; median of {args.rounds} rounds × "
             f"{args.steps} steps; × old: median over rounds of the ratio to old in the same round)", "",
             "| variant | NTP steps/s | NTP+TOP steps/s | NTP × old | NTP+TOP × old | "
             "max rel. loss diff vs old | first step s |",
             "|---|---|---|---|---|---|---|"]
    for name in [*variants, *pairs]:
        first = statistics.median(m["first_step_s"] for r in RUNS for m in results[name, r])
        lines.append(f"| {name} | {med[name, 'ntp']:.2f} | {med[name, 'top']:.2f} | "
                     f"{ratio[name, 'ntp']:.2f}× | {ratio[name, 'top']:.2f}× | "
                     f"{max(rel[name, r] for r in RUNS):.1e} | {first:.1f} |")
    worst = max(rel.values())
    if worst > 1e-5:  # fp32 tolerance: the new code must train the same losses as the old
        print("\n".join(lines))
        raise SystemExit(f"losses differ from the old code's by up to {worst:.1e} (relative): more than fp32 rounding")
    med_job = {}
    if pairs and "old 2 threads" in variants:
        # The main job's layout: old trains NTP then TOP in one process on both cores; new runs them side by side.
        old_job = 1 / med["old 2 threads", "ntp"] + 1 / med["old 2 threads", "top"]  # s per (NTP step + TOP step)
        new_job = max(1 / med[pairs[-1], "ntp"], 1 / med[pairs[-1], "top"])
        lines += ["", "2 processes: NTP and TOP at once, one process per core (the main job's layout); each column "
                  "is that process's own steps/s. Seconds per NTP step + TOP step for the main job: old (one after "
                  f"the other, 2 threads) {old_job:.3f} s, new ({pairs[-1]}) {new_job:.3f} s: "
                  f"{old_job / new_job:.2f}× faster."]
        med_job = {"old_s_per_ntp_and_top_step": old_job, "new_s_per_ntp_and_top_step": new_job}
        if "old 2 processes" in pairs:  # the old code laid out by hand as the new main job runs
            old_pair = max(1 / med["old 2 processes", "ntp"], 1 / med["old 2 processes", "top"])
            lines.append(f"Old code started by hand as two processes, one per core: {old_pair:.3f} s per NTP step + "
                         f"TOP step; new ({pairs[-1]}) is {old_pair / new_job:.2f}× faster than that.")
            med_job["old_2_processes_s_per_ntp_and_top_step"] = old_pair
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        data = {"environment": env, "baseline": args.baseline, "args": vars(args) | {"out": str(args.out)},
                "median_steps_per_s": {f"{k[0]}/{k[1]}": v for k, v in med.items()}, "main_job": med_job,
                "median_ratio_to_old": {f"{k[0]}/{k[1]}": v for k, v in ratio.items()},
                "max_rel_loss_diff": {f"{k[0]}/{k[1]}": v for k, v in rel.items()},
                "raw": {f"{k[0]}/{k[1]}": [{**m, "losses": m["losses"]} for m in v] for k, v in results.items()},
                "table": table}
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
