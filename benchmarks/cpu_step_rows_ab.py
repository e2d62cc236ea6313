"""The last block on the answer rows only, against the full trunk, in one process (issue 13).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/cpu_step_rows_ab.py --steps 24

Demo shapes (G(2,4), N = 10, d 64, 3 layers, batch 256; NTP and NTP + TOP). Two trainers from the same
initialisation take turns on the same batches, step by step (the order flips every step), so the load of a
shared machine hits both alike: "rows" is this checkout (``TrainableLM.rows_needed`` = the loss mask), "full"
the same code with ``rows_needed`` answering None (every position through the last block). Prints the median
per-step time of each, the median per-step ratio and the largest relative loss difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.model import ModelConfig
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer

RUNS = {"ntp": [{"name": "ntp"}], "top": [{"name": "ntp"}, {"name": "top", "window": 4096}]}


def trainer(model_cfg, run: str, rows: bool, data: StarGraphData, run_dir: str) -> Trainer:
    torch.manual_seed(0)
    lm = TrainableLM(model_cfg, RUNS[run])
    if not rows:
        lm.rows_needed = lambda batch: None  # every objective "reads everything": the full trunk
    cfg = TrainConfig(steps=1000, batch_size=256, lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.01,
                      device="cpu", tensorboard=False, compile=False)
    return Trainer(lm, cfg, Path(run_dir), batch_fn=lambda step: data.batch(step, 256, 0), run_config={})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=24, help="steps per trainer (the first 3 are not timed)")
    args = p.parse_args()
    torch.set_num_threads(1)
    graph = StarGraphSpec(2, 4, 10).validate()
    data = StarGraphData(generate(graph, 4096, 0), graph)
    model_cfg = ModelConfig(hidden_size=64, n_layers=3, n_heads=4, intermediate_size=192,
                            vocab_size=graph.vocab_size, max_seq_len=graph.seq_len + 1)
    for run in RUNS:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            trainers = {"rows": trainer(model_cfg, run, True, data, a), "full": trainer(model_cfg, run, False, data, b)}
            losses: dict[str, list[float]] = {n: [] for n in trainers}
            times: dict[str, list[float]] = {n: [] for n in trainers}
            for step in range(args.steps):
                batch = data.batch(step, 256, 0)
                order = list(trainers.items()) if step % 2 else list(reversed(trainers.items()))
                for name, tr in order:
                    t0 = time.perf_counter()
                    losses[name].append(tr.train_step(batch)["loss"])
                    times[name].append(time.perf_counter() - t0)
        ratio = statistics.median(f / r for f, r in zip(times["full"][3:], times["rows"][3:]))
        rel = max(abs(a - b) / abs(b) for a, b in zip(losses["rows"], losses["full"]))
        print(f"{run}: median step rows {statistics.median(times['rows'][3:]):.4f} s, full "
              f"{statistics.median(times['full'][3:]):.4f} s; median per-step ratio full/rows {ratio:.3f}; "
              f"max rel. loss diff {rel:.1e}")


if __name__ == "__main__":
    main()
