"""Does a drafting module underfit or fail to generalise? Teacher-forced depth-1 acceptance on rows it trained on.

    python benchmarks/heads_fit.py --heads OUT/heads --selfgen OUT/selfgen-0.safetensors --text OUT/text.safetensors

Prints the acceptance on the first ``--rows`` rows of a self-generated file (there text == the trunk's greedy
tokens, as in ``cached_heads.draft_accuracy``) and on the first ``--rows`` windows of a ``--text-cache`` file,
where the reference is the trunk's own argmax for the token after next (real text is not the trunk's choice).
Set beside the held-out numbers of ``smollm2_heads.py train`` (heads.json), a large gap means data, not the
module's size, is the limit (results/decode/heads-smollm2.md, session 10).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cached_heads import TrunkCache, draft_accuracy  # noqa: E402
from distill import load_distilled  # noqa: E402
from heads_humaneval import load_heads  # noqa: E402

from foresight.batch import Batch  # noqa: E402
from foresight.errors import ForesightError  # noqa: E402


def _load(flag: str, path: Path):
    """``load_distilled(path)``, or one line naming the flag when the file is not such a file."""
    try:
        return load_distilled(path)
    except Exception as e:  # safetensors' own error type, a missing key, a folder: all "not a states file"
        raise ForesightError(f"{flag} {path}: not a selfgen / --text-cache states file ({type(e).__name__})") from None


@torch.no_grad()
def text_agreement(lm, key: str, path: Path, vocab: torch.Tensor, rows: int, batch: int = 16) -> float:
    """Share of positions t where the module's draft for x[t+2] equals the trunk's argmax at t+1 ((N, L) windows)."""
    tokens, final, last_input, _ = _load("--text", path)
    model, obj = lm.model, lm.objectives[key]
    w_full, w_sub = model.lm_head.weight, model.lm_head.weight[vocab]
    length = tokens.shape[1] - 1
    cos, sin = model.rotary(length, tokens.device)
    hits = total = 0
    for start in range(0, min(rows, tokens.shape[0]), batch):
        idx = torch.arange(start, min(start + batch, rows, tokens.shape[0]))
        out = TrunkCache(final[idx], last_input[idx]).rows(torch.arange(len(idx)), model, cos, sin)
        h, norm = next(iter(obj.head_states(out, Batch(tokens[idx].long(), length), model)))  # depth 1
        draft = vocab[(norm(h) @ w_sub.T).argmax(-1)]  # (B, T): the module at t drafts x[t+2]
        greedy = (out.hidden @ w_full.T).argmax(-1)  # (B, T): the trunk at t picks x[t+1]
        hits += int((draft[:, :-1] == greedy[:, 1:]).sum())
        total += draft[:, :-1].numel()
    return hits / max(total, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=Path, required=True, help="smollm2_heads.py train --out folder")
    ap.add_argument("--selfgen", type=Path, help="a self-generated file the module trained on")
    ap.add_argument("--text", type=Path, help="the --text-cache file the module trained on")
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not (args.selfgen or args.text):
        ap.error("give --selfgen FILE, --text FILE or both")
    for flag, path in (("--heads", args.heads), ("--selfgen", args.selfgen), ("--text", args.text)):
        if path is not None and not path.exists():
            ap.error(f"{flag} {path}: no such file or folder")
    if args.rows < 1 or args.threads < 1:
        ap.error("--rows and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    lm, vocab = load_heads(args.heads)
    key = "dsmtp" if "dsmtp" in lm.objectives else "mtp"
    vocab = vocab if vocab is not None else torch.arange(lm.model.cfg.vocab_size)
    result = {"heads": str(args.heads)}
    if args.selfgen:
        tokens, final, last_input, meta = _load("--selfgen", args.selfgen)
        n = min(args.rows, tokens.shape[0])
        result["selfgen_rows"] = n
        result["selfgen_acceptance"] = draft_accuracy(lm, key, tokens[:n], TrunkCache(final[:n], last_input[:n]),
                                                      vocab, meta["prompt_len"])
    if args.text:
        result["text_rows"] = args.rows
        result["text_agreement"] = text_agreement(lm, key, args.text, vocab, args.rows)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ForesightError as e:  # e.g. a --heads folder that is not a checkpoint
        print(f"foresight: error: {e}", file=sys.stderr)
        sys.exit(2)
