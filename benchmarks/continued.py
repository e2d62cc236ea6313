"""Continued training of a pretrained model: NTP vs NTP + TOP / MTP / DS-MTP, several seeds (issue 14, item 4;
the TOP paper's continued-training setting, §4.3, at CPU scale).

    python benchmarks/continued.py --recipe configs/text/continued_smollm2.yaml --runs ntp,top --seeds 0,1,2 \
        --out runs/continued --results results/continued [--set text.data=... --set text.init_from=...]
    python benchmarks/continued.py --results results/continued --table     # table + plot from the rows only

Every (run, seed) trains with ``foresight train``'s own code path (the recipe, ``train.seed`` = seed), then its
final weights are scored on held-out text: ``val_loss`` (next-token loss on the recipe's fixed validation
windows) and next-line completion (``benchmarks/next_line.py``: greedy, exact match and edit similarity on
the same seeded lines of the validation split for every run). One JSON row per (run, seed) is written to
``--results`` as soon as it is measured (a stopped sweep keeps its rows; finished rows are skipped on a rerun);
``--base`` adds the pretrained model itself as the row ``base`` (seed -1). Then ``table.md`` (mean ± sd over
seeds) and ``continued.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from foresight.environment import describe
from foresight.io import write_json, write_text
from foresight.objectives import as_written

MODEL_NAME = "SmolLM2-135M-Instruct"


def _examples(recipe, args):
    """The held-out next-line examples (the same for every run) and the tokenizer's decode."""
    from next_line import line_examples

    from foresight.config import from_dict
    from foresight.data.tokenizer import load_tokenizer
    from foresight.tasks.text import TextTaskConfig, open_data

    cfg = from_dict(TextTaskConfig, recipe.section, "text")
    data = open_data(cfg)
    tok = load_tokenizer(Path(cfg.data))
    val = data.val.read(0, len(data.val))
    # Skip the windows the recipe's val_loss reads (the stream's start), so the two metrics see different text.
    skip = cfg.val_batches * (cfg.val_batch_size or recipe.train.micro_batch_size) * cfg.seq_len + 128
    skip = min(skip, len(val) // 2)
    ex = line_examples(val[skip:], tok.decode, n=args.examples, context=args.context,
                       max_line_tokens=args.max_new_tokens, eos_id=data.eos_id, seed=args.example_seed)
    return ex, tok.decode


def _score(model, ex, decode, args) -> dict:
    from next_line import complete_lines, score_lines

    t0 = time.perf_counter()
    lines = complete_lines(model, ex.prompts, decode, args.max_new_tokens, batch=args.gen_batch)
    scores = score_lines(ex.targets, lines)
    return {"next_line_exact_match": scores["exact_match"], "next_line_edit_similarity": scores["edit_similarity"],
            "next_line_examples": len(lines), "next_line_context": args.context,
            "next_line_seconds": round(time.perf_counter() - t0, 1), "samples": list(zip(ex.targets, lines))[:4]}


def _base_val_loss(recipe) -> tuple:
    """The pretrained model's val_loss on the very windows the runs are validated on (``run_text``'s code),
    and the model."""
    from foresight.config import from_dict
    from foresight.data.loader import eval_windows, make_batch
    from foresight.hf import load_pretrained_into
    from foresight.tasks.text import TextTaskConfig, open_data, pretrained_config, validate
    from foresight.train.lm import TrainableLM

    cfg = from_dict(TextTaskConfig, recipe.section, "text")
    data = open_data(cfg)
    lm = TrainableLM(pretrained_config(cfg.init_from, data), [{"name": "ntp"}])
    load_pretrained_into(lm, Path(cfg.init_from))
    bs = cfg.val_batch_size or recipe.train.micro_batch_size
    windows = eval_windows(data.val, cfg.seq_len, lm.lookahead, bs, cfg.val_batches)
    val = [make_batch(torch.from_numpy(w), cfg.seq_len, lm.model.cfg.vocab_size, data.eos_id, cfg.cross_documents)
           for w in windows]
    return validate(lm, val)["val_loss"], lm


def sweep(args) -> None:
    from foresight.tasks import run_task
    from foresight.tasks.recipe import load_recipe, select_runs
    from foresight.train.lm import TrainableLM

    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(sys.argv)
    recipe0 = load_recipe(args.recipe, args.overrides)
    ex, decode = _examples(recipe0, args)
    common = {"model": MODEL_NAME, "recipe": str(args.recipe), "overrides": args.overrides, "command": command}

    if args.base and not (results / "base.json").is_file():
        t0 = time.perf_counter()
        val_loss, lm = _base_val_loss(recipe0)
        row = {**common, "objective": "base", "objectives": [], "seed": -1, "val_loss": val_loss, "tokens": 0,
               "steps": 0, **_score(lm.model, ex, decode, args), "wall_clock_s": round(time.perf_counter() - t0, 1),
               **describe("cpu" if not torch.cuda.is_available() else "cuda")}
        write_json(results / "base.json", row)
        print(f"base: val_loss {val_loss:.4f}, next-line exact {row['next_line_exact_match']:.3f}", flush=True)

    for seed in args.seeds:
        recipe = load_recipe(args.recipe, [*args.overrides, f"train.seed={seed}"])
        for name, specs in select_runs(recipe, args.runs).items():
            path = results / f"{name}-seed{seed}.json"
            if path.is_file():
                print(f"{path} exists: skipped", flush=True)
                continue
            out = Path(args.out) / f"{name}-seed{seed}"
            if out.exists():  # a run stopped part-way: start it again
                shutil.rmtree(out)
            t0 = time.perf_counter()
            (result,) = run_task(recipe, {name: specs}, out)
            train_s = time.perf_counter() - t0
            lm, _ = TrainableLM.from_checkpoint(out / name)
            row = {**common, "objective": name, "objectives": as_written(specs), "seed": seed,
                   "val_loss": result["final"]["val_loss"], "tokens": result["tokens"], "steps": result["steps"],
                   "train_wall_clock_s": round(train_s, 1), "tokens_per_s": result["tokens_per_s"],
                   "final": result["final"], **_score(lm.model, ex, decode, args),
                   "trainable": {k: recipe.train.__dict__[k] for k in ("freeze", "unfreeze_blocks")},
                   "seq_len": recipe.section.get("seq_len"), "batch_size": recipe.train.batch_size,
                   **describe(result["device"])}
            row["wall_clock_s"] = round(time.perf_counter() - t0, 1)
            write_json(path, row)
            print(f"{name} seed {seed}: val_loss {row['val_loss']:.4f}, next-line exact "
                  f"{row['next_line_exact_match']:.3f}, edit sim {row['next_line_edit_similarity']:.3f} "
                  f"({row['wall_clock_s']:.0f} s)", flush=True)
            if not args.keep_checkpoints:  # ~1 GB each at this size: keep the metrics, drop the weights
                shutil.rmtree(out / name / "checkpoints", ignore_errors=True)
    table(args)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(args) -> None:
    """``table.md`` (mean ± sd over seeds per objective) and ``continued.png`` from the JSON rows."""
    results = Path(args.results)
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    if not rows:
        print(f"{results}: no rows yet", file=sys.stderr)
        return
    order = ["base", "ntp", "top", "top_w0.5", "top_w0.25", "mtp2", "dsmtp1"]
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (order.index(r["objective"]) if r["objective"] in order else 99, r["seed"])):
        groups.setdefault(r["objective"], []).append(r)
    lines = ["| objective | seeds | val loss (nats/token) | next-line exact match | next-line edit similarity | "
             "tokens | steps | wall-clock per run (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, rs in groups.items():
        seeds = ", ".join(str(r["seed"]) for r in rs) if name != "base" else "—"
        lines.append(f"| {name} | {seeds} | {_mean_sd([r['val_loss'] for r in rs])} | "
                     f"{_mean_sd([r['next_line_exact_match'] for r in rs])} | "
                     f"{_mean_sd([r['next_line_edit_similarity'] for r in rs])} | {rs[0]['tokens']:,} | "
                     f"{rs[0]['steps']} | {statistics.mean(r['wall_clock_s'] for r in rs):.0f} |")
    first = rows[0]
    lines += ["", f"mean ± sd over seeds (sd of the seeds' values; one seed: the value). Model {first['model']}; "
              f"{first['next_line_examples']} held-out next-line examples, {first['next_line_context']}-token "
              f"context, greedy. Device {first['device']}, torch {first['torch']}, {first['date']}."]
    write_text(results / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(groups, results / "continued.png")


def _plot(groups: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    names = list(groups)
    for ax, key, label in [(axes[0], "val_loss", "held-out NTP loss (nats/token)"),
                           (axes[1], "next_line_exact_match", "next-line exact match")]:
        for x, name in enumerate(names):
            values = [r[key] for r in groups[name]]
            ax.scatter([x] * len(values), values, color=f"C{x}", alpha=0.6, s=18)
            mean = statistics.mean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar([x], [mean], yerr=[sd], color="black", marker="_", markersize=16, capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Continued training of SmolLM2-135M on Python (dots: seeds; bars: mean ± sd)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="configs/text/continued_smollm2.yaml")
    p.add_argument("--runs", default=None, help="comma-separated runs of the recipe (default: all)")
    p.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/continued", help="run folders")
    p.add_argument("--results", default="results/continued", help="one JSON row per (run, seed), table, plot")
    p.add_argument("--base", action="store_true", help="also score the pretrained model itself (row 'base')")
    p.add_argument("--examples", type=int, default=48, help="held-out next-line examples")
    p.add_argument("--context", type=int, default=96, help="tokens before each line")
    p.add_argument("--max-new-tokens", type=int, default=24, help="longest line scored (tokens, newline included)")
    p.add_argument("--example-seed", type=int, default=0)
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--table", action="store_true", help="only rebuild table.md and the plot from the rows")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.table:
        table(args)
    else:
        sweep(args)


if __name__ == "__main__":
    from foresight.errors import ForesightError

    try:
        main()
    except ForesightError as e:
        print(f"continued: error: {e}", file=sys.stderr)
        sys.exit(2)
