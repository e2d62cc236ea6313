"""Collect the ``configs/text/memory.yaml`` runs (dense / moe / ultramem, one output folder per seed) into
``results/memory/``: ``rows.jsonl`` (one row per run and seed), ``table.md`` (mean and range over seeds) and
``val_loss.png`` (validation loss vs training tokens, mean over seeds with a min-max band). Reads only the run
folders' ``result.json`` and ``metrics.jsonl``; runs nothing.

    foresight train text/memory --out runs/memory/seed0 --set train.seed=0    # and seed1, ...
    PYTHONPATH=src python benchmarks/memory_report.py runs/memory/seed0 runs/memory/seed1 --out results/memory
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from foresight.environment import describe
from foresight.io import write_text
from foresight.plot import plot_bands
from foresight.train.metrics import read_metrics

RUNS = ("dense", "moe", "ultramem")


def rows_of(folder: Path, command: str) -> list[dict]:
    rows = []
    for name in RUNS:
        path = folder / name / "result.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        metrics = read_metrics(folder / name / "metrics.jsonl")
        per_step = result["tokens"] // max(result["steps"], 1)
        curve = [(e["step"] * per_step, e["val_loss"]) for e in metrics if e.get("kind") == "eval"]
        rows.append({"run": name, "seed": result["seed"], "val_loss": result["final"].get("val_loss"),
                     "best_val_loss": result["best_val_loss"], "steps": result["steps"], "tokens": result["tokens"],
                     "tokens_per_s": result["tokens_per_s"], "total_params": result["total_params"],
                     "activated_params": result.get("activated_params"),
                     "flops_per_token": result.get("flops_per_token"), "ffn": result.get("ffn"),
                     "device": result["device"], "torch": result["torch"], "folder": str(folder / name),
                     "val_curve": curve, "command": command})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| run | seeds | total params | activated params | FLOPs/token | final val loss (mean, min-max) | "
             "tokens/s (mean) |", "|---|---|---:|---:|---:|---|---:|"]
    for name in RUNS:
        mine = [r for r in rows if r["run"] == name]
        if not mine:
            continue
        losses = [r["val_loss"] for r in mine]
        rate = sum(r["tokens_per_s"] for r in mine) / len(mine)
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in mine)} | {mine[0]['total_params']:,} | "
                     f"{mine[0]['activated_params']:,} | {mine[0]['flops_per_token'] / 1e6:.2f}M | "
                     f"{sum(losses) / len(losses):.4f} ({min(losses):.4f}-{max(losses):.4f}) | {rate:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="output folders of `foresight train text/memory`")
    parser.add_argument("--out", type=Path, default=Path("results/memory"))
    parser.add_argument("--command", default="foresight train text/memory --out runs/memory/seed{S} "
                        "--set train.seed={S}  (OMP_NUM_THREADS=1, one run at a time)")
    args = parser.parse_args()
    env = describe("cpu")
    rows = []
    for folder in args.folders:
        found = rows_of(folder, args.command)
        if not found:  # checked before anything under --out is replaced
            parser.error(f"{folder}: no {'/'.join(RUNS)}/result.json there; give the --out folders of "
                         f"`foresight train text/memory`")
        rows += [{**r, **env} for r in found]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    text = table(rows)
    write_text(args.out / "table.md", text + "\n")
    series = {name: [r["val_curve"] for r in rows if r["run"] == name] for name in RUNS}
    plot_bands([{"title": "demo corpus: validation loss", "ylabel": "val loss (nats/token)",
                 "series": {k: v for k, v in series.items() if v}}], args.out / "val_loss.png", xlabel="tokens")
    print(text)


if __name__ == "__main__":
    main()
