"""Multi-round key-value recall in context (issue 16's memory-heavy probe): dense vs MoE vs UltraMemV2 trunks at
matched activated parameters, at toy scale on the CPU.

Every sequence draws a fresh random mapping of ``PAIRS`` keys to values and lists it (``k v k v ...``), then
``ROUNDS`` rounds each ask ``QUERIES`` of those keys again (``k ?``): the model must recall each value from the
context. Only the recalled values are trained and scored (``Batch.loss_mask``); accuracy is top-1 on fixed
held-out sequences, per round. Results: one JSON row per (run, seed) and a Markdown table.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/memory_recall.py --seeds 0 1 --out results/memory
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from foresight.batch import Batch
from foresight.environment import describe
from foresight.io import write_text
from foresight.model import ModelConfig
from foresight.train.config import TrainConfig
from foresight.train.flops import activated_parameters
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer

KEYS, VALUES, FIRST = 32, 32, 4  # ids 0..3 spare, keys 4..35, values 36..67
PAIRS, ROUNDS, QUERIES = 12, 3, 8
SEQ = 2 * PAIRS + 2 * ROUNDS * QUERIES  # 72 tokens
BASE = dict(vocab_size=72, hidden_size=64, n_layers=2, n_heads=4, intermediate_size=192, max_seq_len=SEQ)
RUNS = {
    "dense": {},
    "moe": dict(ffn="moe", moe_experts=8, moe_top_k=2, moe_intermediate_size=96),
    "ultramem": dict(ffn="ultramem", intermediate_size=160, mem_keys=32, mem_kdim=16, mem_knn=8, mem_vdim=32,
                     mem_pre_vdim=16, mem_share_ratio=0.5),
}


def sequences(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, SEQ + 1) tokens and (n, SEQ) bool: which positions predict a recalled value."""
    tokens = torch.zeros(n, SEQ + 1, dtype=torch.long)
    mask = torch.zeros(n, SEQ, dtype=torch.bool)
    for row in range(n):
        keys = torch.randperm(KEYS, generator=generator)[:PAIRS] + FIRST
        values = torch.randint(0, VALUES, (PAIRS,), generator=generator) + FIRST + KEYS
        tokens[row, 0 : 2 * PAIRS : 2], tokens[row, 1 : 2 * PAIRS : 2] = keys, values
        at = 2 * PAIRS
        for _ in range(ROUNDS):
            for q in torch.randperm(PAIRS, generator=generator)[:QUERIES].tolist():
                tokens[row, at], tokens[row, at + 1] = keys[q], values[q]
                mask[row, at] = True  # position `at` reads key q and predicts its value
                at += 2
    return tokens, mask


@torch.no_grad()
def accuracy(model, tokens: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Top-1 accuracy of the recalled values, per round."""
    pred = model(tokens[:, :SEQ]).argmax(-1)
    hit = (pred == tokens[:, 1:]) & mask
    per_round = []
    for r in range(ROUNDS):
        lo, hi = 2 * PAIRS + 2 * QUERIES * r, 2 * PAIRS + 2 * QUERIES * (r + 1)
        per_round.append(float(hit[:, lo:hi].sum() / mask[:, lo:hi].sum()))
    return per_round


def run(name: str, seed: int, steps: int, batch: int) -> dict:
    cfg = ModelConfig(**{**BASE, **RUNS[name]})
    torch.manual_seed(seed)
    lm = TrainableLM(cfg, [{"name": "ntp"}])
    gen = torch.Generator().manual_seed(1000 + seed)
    data = [sequences(batch, gen) for _ in range(steps)]
    held_tokens, held_mask = sequences(512, torch.Generator().manual_seed(99))
    train = TrainConfig(steps=steps, batch_size=batch, lr=3e-3, min_lr=3e-4, warmup_steps=steps // 10, device="cpu",
                        log_every=steps, eval_every=0, seed=seed, tensorboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(lm, train, Path(tmp), batch_fn=lambda s: Batch(data[s][0], SEQ, loss_mask=data[s][1]),
                          run_config={"probe": "memory_recall"}, desc=f"{name}/{seed}", progress=False)
        start = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - start
    acc = accuracy(lm.model.eval(), held_tokens, held_mask)
    return {"probe": "in-context multi-round key-value recall", "run": name, "seed": seed, "steps": steps,
            "batch_size": batch, "seq_len": SEQ, "pairs": PAIRS, "rounds": ROUNDS, "queries": QUERIES,
            "accuracy_per_round": [round(a, 4) for a in acc], "accuracy": round(sum(acc) / len(acc), 4),
            "total_params": lm.model.num_parameters(), "activated_params": activated_parameters(lm.model),
            "wall_s": round(wall, 1), "model": RUNS[name]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("results/memory"))
    args = parser.parse_args()
    env = {**describe("cpu"), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python", *sys.argv])}
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "recall.jsonl"
    rows = []
    for seed in args.seeds:
        for name in RUNS:
            row = {**run(name, seed, args.steps, args.batch), **env}
            rows.append(row)
            with rows_path.open("a") as f:  # a row as soon as a run ends: a stopped sweep keeps what it did
                f.write(json.dumps(row) + "\n")
            print(f"{name} seed {seed}: accuracy {row['accuracy']:.3f} per round {row['accuracy_per_round']}, "
                  f"{row['wall_s']} s", flush=True)
    lines = ["| run | seeds | total params | activated params | recall accuracy (mean over seeds) | per round |",
             "|---|---|---:|---:|---:|---|"]
    for name in RUNS:
        mine = [r for r in rows if r["run"] == name]
        mean = sum(r["accuracy"] for r in mine) / len(mine)
        rounds = [round(sum(r["accuracy_per_round"][i] for r in mine) / len(mine), 3) for i in range(ROUNDS)]
        lines.append(f"| {name} | {len(mine)} | {mine[0]['total_params']:,} | {mine[0]['activated_params']:,} | "
                     f"{mean:.3f} | {rounds} |")
    table = "\n".join(lines)
    write_text(args.out / "recall.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
