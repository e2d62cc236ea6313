"""Self-generated training text for drafting heads: SmolLM2's own greedy continuations of code prompts.

    python benchmarks/selfgen.py --model /tmp/sm-heads --out /tmp/selfgen.safetensors \
        --prompts 512 --prompt-len 48 --new-tokens 112 --batch 32 --seed 0

Verification accepts a draft iff it equals the model's own greedy token, so the heads should learn the model's
outputs on the model's own text (Medusa-2 §3.2, EAGLE §4: self-distillation). Prompts look like what the heads
will face on HumanEval without being HumanEval: most end just after the docstring of a function (the P tokens of
the source file up to and including the docstring's closing quotes and the newline after it), taken from the
Python standard library (the demo corpus's files) and from this repository's own ``src/``; the rest
(``--window-frac``) are random P-token windows of those files. Greedy continuations run in batches with the KV
cache (``distill.greedy_continuations``), keeping the trunk's states on the way, so head training needs no
second trunk pass. The output is ``distill.save_distilled``'s safetensors file (tokens int32 (N, P + n), states
fp32 (N, P + n - 1, D), metadata), rewritten after every batch so a long run is usable before it ends; it is what
``smollm2_heads.py train --tokens`` reads. Seeded: same prompts, same order, for the same files and seed.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def docstring_ends(source: str) -> list[int]:
    """Character offsets just past each function's docstring (closing quotes and the newline after them), in
    source order. Functions without a docstring are skipped; a file that does not parse gives none."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    starts = [0]
    for line in source.splitlines(keepends=True):  # offset of each line's first character (1-based lines)
        starts.append(starts[-1] + len(line))
    ends = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str) and first.end_lineno is not None:
                ends.append(starts[first.end_lineno])  # the start of the line after the docstring
    return sorted(ends)


def code_files(extra: list[Path]) -> list[Path]:
    """The demo corpus's standard-library files, then this repository's ``src/`` (and ``extra`` folders)."""
    from foresight.data.demo_corpus import demo_files

    files = list(demo_files())
    for folder in [ROOT / "src", *extra]:
        files += sorted(Path(folder).rglob("*.py"))
    return files


def make_prompts(tok, files: list[Path], n: int, length: int, window_frac: float, seed: int) -> tuple[torch.Tensor,
                                                                                                        list[str]]:
    """``n`` prompts of ``length`` tokens, (n, length) long, and where each comes from. A docstring prompt is the
    last ``length`` tokens of the file's text up to a docstring's end (the head of the file fills in when the
    function starts early); a window prompt is ``length`` tokens from a random place in a file."""
    rng = random.Random(seed)
    candidates = []  # (file index, character offset or -1 for a window)
    texts = []
    for i, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            text = ""
        texts.append(text)
        candidates += [(i, end) for end in docstring_ends(text)]
    rng.shuffle(candidates)
    n_windows = round(n * window_frac)
    rows, origin = [], []
    for i, end in candidates:
        if len(rows) >= n - n_windows:
            break
        ids = tok.encode(texts[i][max(0, end - 8 * length) : end])  # ~8 characters per token at least: enough
        if len(ids) >= length:
            rows.append(ids[-length:])
            origin.append(f"{files[i].name}@{end}")
    while len(rows) < n:  # windows (also fills in when there are too few docstrings)
        i = rng.randrange(len(files))
        ids = tok.encode(texts[i][:200_000])
        if len(ids) < length + 1:
            continue
        s = rng.randrange(len(ids) - length)
        rows.append(ids[s : s + length])
        origin.append(f"{files[i].name}#{s}")
    order = list(range(len(rows)))
    rng.shuffle(order)  # mix docstring and window prompts across batches
    return torch.tensor([rows[j] for j in order], dtype=torch.long), [origin[j] for j in order]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="the imported model (foresight import; tokenizer/)")
    ap.add_argument("--out", type=Path, required=True, help="safetensors file: tokens, trunk states, metadata")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32, help="rows decoded together (throughput)")
    ap.add_argument("--window-frac", type=float, default=0.25, help="share of random-window prompts")
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="more folders of .py files for prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from distill import greedy_continuations, save_distilled

    from foresight.data.tokenizer import load_tokenizer
    from foresight.environment import describe
    from foresight.errors import ForesightError
    from foresight.train.lm import TrainableLM

    if not (args.prompts > 0 and args.prompt_len > 0 and args.new_tokens > 1 and args.batch > 0
            and 0 <= args.window_frac <= 1):
        raise ForesightError("--prompts, --prompt-len, --batch must be positive, --new-tokens > 1, "
                             "--window-frac in [0, 1]")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = load_tokenizer(args.model / "tokenizer")
    files = code_files(args.extra)
    prompts, origin = make_prompts(tok, files, args.prompts, args.prompt_len, args.window_frac, args.seed)
    lm, _ = TrainableLM.from_checkpoint(args.model)
    meta = {"model": str(args.model), "prompts": args.prompts, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "batch": args.batch, "seed": args.seed, "threads": args.threads,
            "window_frac": args.window_frac, "files": len(files), "origin": origin,
            "environment": describe("cpu"), "command": "python " + " ".join(sys.argv)}

    def progress(done, seconds):  # saved after every batch: a long run can be used before it ends
        rows = done[0].shape[0]
        made = rows * args.new_tokens
        save_distilled(args.out, *done, {**meta, "rows": rows, "seconds": round(seconds, 1)})
        print(f"{rows}/{args.prompts} rows, {made} new tokens in {seconds:.0f} s ({made / seconds:.1f} tok/s)",
              file=sys.stderr, flush=True)

    greedy_continuations(lm.model, prompts, args.new_tokens, args.batch, progress)
    print(json.dumps({k: v for k, v in meta.items() if k != "origin"}), file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
