"""Drafting heads for SmolLM2 on CPU: self-distil, then train MTP heads / DS-MTP modules on the frozen trunk.

    python benchmarks/smollm2_heads.py distill --model runs/smollm2 --data data/smollm2-demo --out runs/distill.npy
    python benchmarks/smollm2_heads.py train --model runs/smollm2 --tokens runs/distill.npy --drafter mtp --k 3 \
        --out runs/smollm2-mtp3

``distill``: greedy continuations of prompts from the prepared data's train split (foresight.generate.distill).
``train``: the trunk runs once over every sequence, its outputs are cached, and only the heads train on the
cache (foresight.train.cached_heads), over a frequency-ranked draft vocabulary; writes a checkpoint that
``benchmarks/speculative.py`` reads (the draft vocabulary travels in its config).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from foresight.environment import describe
from foresight.train.lm import TrainableLM


def distill(args) -> None:
    from foresight.data.shards import PreparedData
    from foresight.generate.distill import greedy_continuations, prompt_windows, save_tokens

    lm, _ = TrainableLM.from_checkpoint(args.model)
    stream = PreparedData.open(args.data).split("train")
    tokens = stream.read(0, len(stream))
    prompts = prompt_windows(tokens, args.prompts, args.prompt_len, args.seed)

    def progress(rows, seconds):
        save_tokens(rows, args.out)
        made = rows.shape[0] * args.new_tokens
        print(f"{rows.shape[0]}/{args.prompts} rows, {made} tokens in {seconds:.0f} s ({made / seconds:.1f} tok/s)",
              file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    out = greedy_continuations(lm.model, prompts, args.new_tokens, args.batch, progress)
    meta = {"model": str(args.model), "data": str(args.data), "prompts": args.prompts, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "batch": args.batch, "seed": args.seed, "shape": list(out.shape),
            "seconds": time.perf_counter() - t0, "environment": describe("cpu"), "command": " ".join(sys.argv)}
    Path(str(args.out) + ".json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("distill", help="greedy continuations of train-split prompts")
    d.add_argument("--model", type=Path, required=True)
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True, help=".npy file (N, prompt_len + new_tokens) int32")
    d.add_argument("--prompts", type=int, default=256)
    d.add_argument("--prompt-len", type=int, default=32)
    d.add_argument("--new-tokens", type=int, default=96)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=distill)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
