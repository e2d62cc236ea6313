"""MuToR's training step against NTP's, and its two register layouts against each other, in one process (issue 24).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mutor_step.py --steps 24 --out results/mutor/step.md

Star-graph shapes of configs/stargraph/cpu_solve.yaml (G(2,4), N = 10, width 48, 3 layers, batch 256, sequence 24,
4 trained answer positions per row). Three trainers from the same initialisation take turns on the same batches,
step by step (the order rotates every step, so the load of a shared machine hits all alike):

- ``ntp``: NTP alone;
- ``mutor``: 0.7·NTP + 0.3·MuToR (d_max 4) as built: registers only after the trained positions (T + K = 28 inputs);
- ``mutor-every``: the same objective with a register after *every* token, the paper's literal layout (2T = 48
  inputs; ``register_slots`` patched), whose losses must equal ``mutor``'s (the unscored registers change nothing).

Each MuToR step draws its d with the same seed in both MuToR trainers. Prints the median step time of each, the
median per-step ratios, and the largest relative loss difference between the two layouts; writes the table to
``--out`` (markdown, with the machine, versions, date and this command).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import foresight
import foresight.objectives.mutor as mutor
from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.model import ModelConfig
from foresight.objectives.base import IGNORE_INDEX, shifted_labels
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer

RUNS = {"ntp": [{"name": "ntp"}],
        "mutor": [{"name": "ntp", "weight": 0.7}, {"name": "mutor", "weight": 0.3, "d_max": 4}],
        "mutor-every": [{"name": "ntp", "weight": 0.7}, {"name": "mutor", "weight": 0.3, "d_max": 4}]}
PLACED = mutor.register_slots


def every_token(batch):
    """A register after every token (2T inputs); only those of trained positions are scored (valid)."""
    b, t = batch.tokens.shape[0], batch.seq_len
    trained = shifted_labels(batch, 0) != IGNORE_INDEX  # (B, T)
    return torch.arange(t, device=trained.device).expand(b, t), trained


def trainer(model_cfg, run: str, data: StarGraphData, run_dir: str) -> Trainer:
    torch.manual_seed(0)
    lm = TrainableLM(model_cfg, RUNS[run])
    cfg = TrainConfig(steps=1000, batch_size=256, lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.01,
                      device="cpu", tensorboard=False, compile=False)
    return Trainer(lm, cfg, Path(run_dir), batch_fn=lambda step: data.batch(step, 256, 0), run_config={})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=24, help="steps per trainer (the first 3 are not timed)")
    p.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    args = p.parse_args()
    torch.set_num_threads(1)
    graph = StarGraphSpec(2, 4, 10).validate()
    data = StarGraphData(generate(graph, 4096, 0), graph)
    model_cfg = ModelConfig(hidden_size=48, n_layers=3, n_heads=4, intermediate_size=144,
                            vocab_size=graph.vocab_size, max_seq_len=graph.seq_len + 1)
    times: dict[str, list[float]] = {n: [] for n in RUNS}
    losses: dict[str, list[float]] = {n: [] for n in RUNS}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {n: trainer(model_cfg, n, data, f"{tmp}/{n}") for n in RUNS}
        names = list(trainers)
        for step in range(args.steps):
            batch = data.batch(step, 256, 0)
            for name in names[step % 3:] + names[: step % 3]:  # rotate the order every step
                mutor.register_slots = every_token if name == "mutor-every" else PLACED
                torch.manual_seed(1000 + step)  # the same d per row in both MuToR trainers
                t0 = time.perf_counter()
                losses[name].append(trainers[name].train_step(batch)["loss"])
                times[name].append(time.perf_counter() - t0)
    mutor.register_slots = PLACED
    med = {n: statistics.median(times[n][3:]) for n in RUNS}
    ratio = {n: statistics.median(a / b for a, b in zip(times[n][3:], times["ntp"][3:])) for n in RUNS}
    every_vs = statistics.median(a / b for a, b in zip(times["mutor-every"][3:], times["mutor"][3:]))
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses["mutor-every"], losses["mutor"]))
    rows = ["| run | inputs per row | median step (s) | median ratio to ntp |", "|---|---|---|---|"]
    inputs = {"ntp": "24", "mutor": "24 + 28", "mutor-every": "24 + 48"}
    rows += [f"| {n} | {inputs[n]} | {med[n]:.4f} | {ratio[n]:.2f} |" for n in RUNS]
    summary = (f"median per-step ratio mutor-every / mutor: {every_vs:.2f}; largest relative loss difference "
               f"mutor-every vs mutor over {args.steps} steps: {rel:.1e}")
    print("\n".join(rows))
    print(summary)
    if args.out is not None:
        cmd = "PYTHONPATH=src OMP_NUM_THREADS=1 python " + " ".join(sys.argv)
        head = [f"# MuToR training step on the star graph (cpu_solve shapes), {datetime.date.today()}", "",
                f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, 1 thread, load average "
                f"{os.getloadavg()[0]:.1f} at the end (a shared machine makes the times noisy; the ratios come from "
                f"interleaved steps); Python {platform.python_version()}, torch {torch.__version__}, "
                f"foresight {foresight.__version__}.",
                f"Command: `{cmd}`", "",
                "Inputs per row: the plain pass's 24, plus MuToR's own pass (24 tokens + 4 registers at the "
                "trained positions, or 24 + 24 with a register after every token).", ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(head + rows + ["", summary, ""]))


if __name__ == "__main__":
    main()
