"""Drafting heads for SmolLM2 on CPU: self-distil, then train MTP heads / DS-MTP modules on the frozen trunk.

    python benchmarks/smollm2_heads.py distill --model runs/smollm2 --data data/smollm2-demo --out runs/distill.npy
    python benchmarks/smollm2_heads.py train --model runs/smollm2 --tokens runs/distill.npy --drafter mtp --k 3 \
        --out runs/smollm2-mtp3

``distill``: greedy continuations of prompts from the prepared data's train split (benchmarks/distill.py).
``train``: the trunk runs once over every sequence, its outputs are cached, and only the heads train on the
cache (benchmarks/cached_heads.py), over a frequency-ranked draft vocabulary; writes a checkpoint that
``benchmarks/speculative.py`` reads (the draft vocabulary travels in its config).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from foresight.environment import describe
from foresight.train.lm import TrainableLM


def distill(args) -> None:
    from distill import greedy_continuations, prompt_windows, save_distilled

    from foresight.data.shards import PreparedData

    torch.set_num_threads(args.threads)
    lm, _ = TrainableLM.from_checkpoint(args.model)
    stream = PreparedData.open(args.data).split("train")
    prompts = prompt_windows(stream.read(0, len(stream)), args.prompts, args.prompt_len, args.seed)

    meta = {"model": str(args.model), "data": str(args.data), "prompts": args.prompts, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "batch": args.batch, "seed": args.seed, "threads": args.threads,
            "environment": describe("cpu"), "command": "python " + " ".join(sys.argv)}

    def progress(done, seconds):  # saved after every batch: a long run can be used before it ends
        rows = done[0].shape[0]
        made = rows * args.new_tokens
        save_distilled(args.out, *done, {**meta, "rows": rows, "seconds": round(seconds, 1)})
        print(f"{rows}/{args.prompts} rows, {made} tokens in {seconds:.0f} s ({made / seconds:.1f} tok/s)",
              file=sys.stderr, flush=True)

    greedy_continuations(lm.model, prompts, args.new_tokens, args.batch, progress)  # saved as it goes
    print(json.dumps(meta), file=sys.stderr)


def text_cache(args, model, length: int):
    """``--text-rows`` windows of ``length`` tokens from the train split of ``--text-from`` and the frozen trunk's
    states over them (one forward pass, ``cache_trunk``), kept in ``--text-cache`` for the next training run.
    Real Python beside the self-distilled rows: every position trains (targets are the text's own tokens)."""
    from cached_heads import cache_trunk
    from distill import load_distilled, prompt_windows, save_distilled

    from foresight.data.shards import PreparedData

    want = {"kind": "text", "data": str(args.text_from), "rows": args.text_rows, "length": length,
            "seed": args.text_seed}
    if args.text_cache is not None and Path(args.text_cache).is_file():
        tokens, final, last_input, meta = load_distilled(args.text_cache)
        if {k: meta.get(k) for k in want} == want:
            return tokens, final, last_input
    stream = PreparedData.open(args.text_from).split("train")
    tokens = prompt_windows(stream.read(0, len(stream)), args.text_rows, length, args.text_seed)
    t0 = time.perf_counter()
    cache = cache_trunk(model, tokens, batch=8)
    print(f"text cache: {args.text_rows} x {length} tokens in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
          flush=True)
    if args.text_cache is not None:
        save_distilled(args.text_cache, tokens, cache.final, cache.last_input,
                       {**want, "prompt_len": 0, "seconds": round(time.perf_counter() - t0, 1)})
    return tokens, cache.final, cache.last_input


def train(args) -> None:
    import shutil

    from cached_heads import TrunkCache, draft_accuracy, frequent_ids, init_from_last_block, train_heads
    from distill import load_distilled

    from foresight.io import write_json
    from foresight.train.checkpoint import SUFFIX
    from foresight.train.state_file import save_state

    torch.set_num_threads(args.threads)
    parts = [load_distilled(path) for path in args.tokens]  # several files (parallel selfgen runs): same lengths
    if len({(p[0].shape[1], p[3]["prompt_len"]) for p in parts}) > 1:
        from foresight.errors import ForesightError

        raise ForesightError("--tokens files differ in sequence or prompt length")
    tokens, final, last_input = (torch.cat([p[j] for p in parts]) for j in range(3))
    meta = parts[0][3] if len(parts) == 1 else {**parts[0][3], "files": [p[3] for p in parts]}
    if args.rows:  # the first rows only (a curve over data size)
        tokens, final, last_input = tokens[: args.rows], final[: args.rows], last_input[: args.rows]
    first = meta["prompt_len"]  # targets from here on are the model's own greedy tokens
    base, _ = TrainableLM.from_checkpoint(args.model)
    key = args.drafter
    if key == "mtp":
        spec = {"name": "mtp", "n": args.k + 1}  # heads 1..k (head 0 is the trunk)
    else:
        spec = {"name": "dsmtp", "preset": args.preset, "depth": args.k}
    specs = [{"name": "ntp"}, spec]
    lm = TrainableLM(base.model.cfg, specs)
    lm.model.load_state_dict(base.model.state_dict())
    del base
    init_from_last_block(lm, key, scale=float(last_input.pow(2).mean().sqrt()))  # RMS of the last block's input
    n = tokens.shape[0]
    train_rows, held_rows = torch.arange(n - args.held_out), torch.arange(n - args.held_out, n)
    if args.vocab_from is not None:  # rank by a large corpus (FR-Spec): better coverage than a few distilled rows
        import numpy as np

        from foresight.data.shards import PreparedData

        stream = PreparedData.open(args.vocab_from).split("train")
        ranked = torch.from_numpy(stream.read(0, len(stream)).astype(np.int64))
    else:
        ranked = tokens[train_rows, first:]
    vocab = frequent_ids(ranked, args.draft_vocab, lm.model.cfg.vocab_size)
    held_targets = tokens[held_rows, first:]
    coverage = float(torch.isin(held_targets, vocab).float().mean())
    train_tokens = tokens[train_rows]
    cache = TrunkCache(final[train_rows], last_input[train_rows])
    # CE learns the text's tokens, which equal the trunk's choices only in the generated part; KL learns the
    # trunk's own distribution, which the cache holds at every position (prompts too)
    first_target = first if args.loss == "ce" else args.kl_first
    if args.text_rows:  # real Python beside the distilled rows: every position of those rows trains
        text_tokens, text_final, text_last = text_cache(args, lm.model, tokens.shape[1])
        train_tokens = torch.cat([train_tokens, text_tokens])
        cache = TrunkCache(torch.cat([cache.final, text_final]), torch.cat([cache.last_input, text_last]))
        first_target = torch.tensor([first_target] * len(train_rows) + [0] * len(text_tokens))
    held = TrunkCache(final[held_rows], last_input[held_rows])
    acc0 = draft_accuracy(lm, key, tokens[held_rows], held, vocab, first)
    print(f"draft vocabulary {len(vocab)}: covers {coverage:.1%} of held-out targets; accuracy before {acc0}",
          file=sys.stderr, flush=True)

    curve = []  # held-out HumanEval teacher-forced acceptance against training positions seen
    he_rows = None
    if args.eval_states is not None:
        from heads_humaneval import heads_accuracy, load_states

        he_rows = load_states(args.eval_states)
        curve.append({"step": 0, "positions_seen": 0, "humaneval": heads_accuracy(lm, key, he_rows, vocab)})
        print(json.dumps(curve[-1]), file=sys.stderr, flush=True)

    def log(rec):
        if rec["step"] % 20 == 0 or rec["step"] == 1:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}),
                  file=sys.stderr, flush=True)
        if he_rows is not None and (rec["step"] % args.eval_every == 0 or rec["step"] == args.steps):
            lm.objectives[key].eval()
            point = {"step": rec["step"], "positions_seen": rec["step"] * args.batch * (tokens.shape[1] - 1),
                     "seconds": round(rec["seconds"], 1), "humaneval": heads_accuracy(lm, key, he_rows, vocab)}
            lm.objectives[key].train()
            curve.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    records = train_heads(lm, key, train_tokens, cache, vocab, steps=args.steps, batch=args.batch,
                          lr=args.lr, first_target=first_target, seed=args.seed, log=log, loss=args.loss)
    seconds = time.perf_counter() - t0
    acc1 = draft_accuracy(lm, key, tokens[held_rows], held, vocab, first)
    print(f"accuracy after {acc1} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    info = {"model": "SmolLM2-135M-Instruct", "drafter": key, "k": args.k, "spec": spec, "draft_vocab": len(vocab),
            "draft_vocab_ranked_by": str(args.vocab_from or args.tokens[0]),
            "draft_vocab_coverage": coverage, "held_out_accuracy_before": acc0, "held_out_accuracy": acc1,
            "train_sequences": len(train_rows), "held_out_sequences": len(held_rows),
            "trained_positions_per_head": int(len(train_rows) * (tokens.shape[1] - first)),
            "text_rows": args.text_rows, "text_positions": int(args.text_rows * (tokens.shape[1] - 1)),
            "text_from": str(args.text_from) if args.text_rows else None, "steps": args.steps,
            "batch": args.batch, "lr": args.lr, "loss": args.loss, "curve": curve, "seconds": round(seconds, 1),
            "final_losses": records[-1],
            "distilled": meta, "environment": describe("cpu"), "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": asdict(lm.model.cfg), "objectives": specs, "draft_vocab": vocab.tolist(),
              "model_name": "SmolLM2-135M-Instruct",
              "imported_from": {"path": str(Path(args.model).resolve()), "heads": info["spec"]}}
    if (Path(args.model) / "tokenizer").is_dir():
        shutil.copytree(Path(args.model) / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
        config["tokenizer"] = "tokenizer"
    save_state({"lm": lm.state_dict(), "config": config, "step": 0}, out / f"step_00000000{SUFFIX}")
    write_json(out / "heads.json", info)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("distill", help="greedy continuations of train-split prompts")
    d.add_argument("--model", type=Path, required=True)
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True, help="safetensors file: tokens, trunk states, metadata")
    d.add_argument("--prompts", type=int, default=256)
    d.add_argument("--prompt-len", type=int, default=32)
    d.add_argument("--new-tokens", type=int, default=96)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=2)
    d.set_defaults(func=distill)
    t = sub.add_parser("train", help="train drafting heads on the cached trunk states of distilled text")
    t.add_argument("--model", type=Path, required=True, help="the imported model (foresight import)")
    t.add_argument("--tokens", type=Path, nargs="+", required=True, help="distill's or selfgen.py's output "
                   "(several files: their rows joined)")
    t.add_argument("--drafter", choices=("mtp", "dsmtp"), default="mtp")
    t.add_argument("--k", type=int, default=3, help="MTP heads 1..k, or DS-MTP depth k")
    t.add_argument("--preset", default="top_paper", help="DS-MTP preset (default top_paper: shared final norm)")
    t.add_argument("--draft-vocab", type=int, default=8192, help="most frequent ids the heads score")
    t.add_argument("--vocab-from", type=Path, help="prepared data whose train split ranks the draft vocabulary "
                   "(default: the distilled tokens)")
    t.add_argument("--text-rows", type=int, default=0, help="also train on this many windows of real text "
                   "(--text-from's train split), every position, beside the distilled rows (default 0)")
    t.add_argument("--text-from", type=Path, help="prepared data for --text-rows (default: --vocab-from)")
    t.add_argument("--text-seed", type=int, default=1, help="seed of the --text-rows windows")
    t.add_argument("--text-cache", type=Path, help="safetensors file keeping the trunk states of --text-rows "
                   "(reused when it matches)")
    t.add_argument("--loss", choices=("ce", "kl"), default="ce", help="ce: the text's tokens (generated part "
                   "only); kl: the trunk's own distribution for each target (every position, --kl-first on)")
    t.add_argument("--kl-first", type=int, default=1, help="with --loss kl: first target index trained (default 1)")
    t.add_argument("--rows", type=int, default=0, help="use only the first ROWS distilled sequences (0: all)")
    t.add_argument("--eval-states", type=Path, help="heads_humaneval.py states file: held-out HumanEval "
                   "teacher-forced acceptance every --eval-every steps (the curve in heads.json)")
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch", type=int, default=8, help="sequences per step")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--held-out", type=int, default=16, help="last sequences kept for the accuracy check")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", type=Path, required=True,
                   help="output folder: step_00000000.safetensors, heads.json, tokenizer/")
    t.set_defaults(func=train)
    args = ap.parse_args(argv)
    if getattr(args, "text_rows", 0):
        args.text_from = args.text_from or args.vocab_from
        if args.text_from is None:
            ap.error("--text-rows needs --text-from (or --vocab-from)")
    args.func(args)


if __name__ == "__main__":
    main()
