"""Self-speculative decoding benchmark: acceptance, tau and wall-clock speed-up against plain greedy decoding.

    python benchmarks/speculative.py CHECKPOINT --data PREPARED_DIR [--drafters mtp] [--batch-sizes 1,4]

Prompts are fixed windows of the prepared data's validation split. For every drafter and batch size the same
prompts are decoded greedily twice — plain (one token per forward, KV cache) and speculative (draft with
the model's own heads, verify with head 0) — alternating over ``--repeats`` rounds so that load on a shared
machine hits both alike; the table gives median wall-clock times, and checks that every output is identical.
tau (mean tokens per verification forward) is reported apart from the speed-up: tau is not speed-up (Meta
MTP §3.2 reports 3.0x on code with 4 heads; their tau was 3.5). In a batch every row advances by its own
accepted length; tokens/step is what a row gains per forward averaged over the batch, a row that has
finished (while others still decode) counting 0, so it is at most tau.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from foresight.environment import cpu_name
from foresight.generate import generate, make_drafter, speculative_generate, top_draft_acceptance
from foresight.generate.drafters import Drafter
from foresight.generate.packed import is_packed, pack_linears
from foresight.generate.rows import window
from foresight.generate.speculative import AUTO_NGRAM_DRAFTS
from foresight.train.lm import TrainableLM


class OracleDrafter(Drafter):
    """The ceiling of the method on this machine: the model's own drafter runs (so drafting costs what it
    costs), but the verifier is shown the true greedy continuation, so every draft is accepted."""

    def __init__(self, inner: Drafter, truth: torch.Tensor) -> None:
        self.inner, self.truth, self.n_draft, self.name = inner, truth, inner.n_draft, f"oracle ({inner.name} cost)"

    def reset(self) -> None:
        self.inner.reset()

    def keep_rows(self, rows):
        self.inner.keep_rows(rows)
        self.truth = self.truth[rows]

    def propose(self, out, seq, pos0, n):
        self.inner.propose(out, seq, pos0, n)
        return window(self.truth, n + 1, self.n_draft)  # x[N+1..N+D] per row


class TimedDrafter(Drafter):
    """A drafter whose ``propose`` time is added up (the drafting share of a speculative step)."""

    def __init__(self, inner: Drafter) -> None:
        self.inner, self.n_draft, self.name, self.seconds = inner, inner.n_draft, inner.name, 0.0

    def reset(self) -> None:
        self.inner.reset()

    def keep_rows(self, rows):
        self.inner.keep_rows(rows)

    def propose(self, out, seq, pos0, n):
        t0 = time.perf_counter()
        drafts = self.inner.propose(out, seq, pos0, n)
        self.seconds += time.perf_counter() - t0
        return drafts


def prompts_from(data: Path, n: int, length: int, split: str = "val") -> torch.Tensor:
    """``n`` windows of ``length`` tokens spread evenly over a prepared split: (n, length) long."""
    from foresight.data.shards import PreparedData

    stream = PreparedData.open(data).split(split)
    starts = np.linspace(0, len(stream) - length - 1, n).astype(int)
    return torch.stack([torch.from_numpy(stream.read(int(s), length).astype(np.int64)) for s in starts])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(lm, prompts: torch.Tensor, new_tokens: int, batch: int, drafter: str, repeats: int,
          draft_vocab: torch.Tensor | None = None) -> dict:
    """Median wall-clock of plain vs speculative greedy decoding of every prompt, ``batch`` rows at a time.

    ``drafter``: mtp, dsmtp, top, auto, or oracle-<kind> (perfect drafts at the cost of that drafter),
    optionally with ``:k`` drafts per step (``mtp:1`` uses MTP head 1 only) or ``:auto`` (the block size chosen
    per step from measured costs and running acceptance; ngram then drafts up to AUTO_NGRAM_DRAFTS)."""
    batches = [prompts[i : i + batch] for i in range(0, prompts.shape[0] - batch + 1, batch)]
    # The true continuations feed the oracle drafter only (one more plain pass); otherwise warm up briefly.
    oracle = drafter.startswith("oracle")
    truths = [generate(lm.model, ids, new_tokens + 8) for ids in batches] if oracle else None
    if not oracle:
        generate(lm.model, batches[0], 8)

    kind, _, k = drafter.partition(":")  # "mtp:2" = the first 2 MTP heads only; "ngram:auto" = block size chosen
    auto = k == "auto"  # per step from measured costs (generate/block_size.py)
    n_draft = (AUTO_NGRAM_DRAFTS if kind == "ngram" else None) if auto else int(k) if k else None
    block = "auto" if auto else None

    def make(i):
        if kind.startswith("oracle"):
            inner = make_drafter(lm, kind.split("-", 1)[1] if "-" in kind else "auto", n_draft,
                                 draft_vocab=draft_vocab)
            return OracleDrafter(inner, truths[i])
        return make_drafter(lm, kind, n_draft, draft_vocab=draft_vocab)

    speculative_generate(lm, batches[0], 8, make(0), n_draft=block)  # warm-up (and the cost calibration)
    plain_t, spec_t, identical, stats_all, draft_total = [], [], True, [], 0.0
    for _ in range(repeats):
        p_total = s_total = 0.0
        for i, ids in enumerate(batches):
            want, t = timed(lambda ids=ids: generate(lm.model, ids, new_tokens))
            p_total += t
            d = TimedDrafter(make(i))
            (got, stats), t = timed(lambda ids=ids, d=d: speculative_generate(lm, ids, new_tokens, d, n_draft=block))
            s_total += t
            draft_total += d.seconds
            identical &= torch.equal(got, want)
            stats_all.append(stats)
        plain_t.append(p_total)
        spec_t.append(s_total)
    tokens = new_tokens * sum(b.shape[0] for b in batches)
    n_draft = stats_all[0].n_draft
    drafted = [sum(s.drafted[i] for s in stats_all) for i in range(n_draft)]
    accepted = [sum(s.accepted[i] for s in stats_all) for i in range(n_draft)]
    row_tokens, row_steps = sum(s.row_tokens for s in stats_all), sum(s.row_steps for s in stats_all)
    plain, spec = statistics.median(plain_t), statistics.median(spec_t)
    steps = sum(s.steps for s in stats_all) / repeats  # verification forwards per round
    return {"drafter": drafter, "batch": batch, "prompts": sum(b.shape[0] for b in batches),
            "k": n_draft, "steps": steps,
            # Per-step cost in units of a plain decoding step: speed-up = tokens per step / this.
            "plain_ms_per_step": 1000 * plain / (new_tokens * len(batches)),
            "spec_ms_per_step": 1000 * spec / steps,
            "draft_ms_per_step": 1000 * draft_total / repeats / steps,  # mean over rounds (not a median)
            "tau": row_tokens / row_steps,
            "tokens_per_step": row_tokens / sum(s.steps * s.batch for s in stats_all),
            "acceptance": [a / d for a, d in zip(accepted, drafted)],
            "plain_tok_s": tokens / plain, "spec_tok_s": tokens / spec, "speedup": plain / spec,
            "identical": identical, "plain_s": plain, "spec_s": spec,
            "block_sizes": [sum(s.block_sizes) / max(len(s.block_sizes), 1) for s in stats_all]}


def table(rows: list[dict], header: str) -> str:
    width = max(len(r["acceptance"]) for r in rows)
    acc_cols = " | ".join(f"acc d{i + 1}" for i in range(width))
    lines = [header, "", f"| drafter | batch | tau | tokens/step | {acc_cols} | plain tok/s | speculative tok/s | "
             "speed-up | identical |", "|" + "---|" * (8 + width)]
    for r in rows:
        acc = " | ".join([f"{a:.1%}" for a in r["acceptance"]] + ["—"] * (width - len(r["acceptance"])))
        k = statistics.mean(r["block_sizes"]) if r.get("block_sizes") and any(r["block_sizes"]) else None
        name = r["drafter"] if k is None else f"{r['drafter']} (mean k {k:.1f})"
        lines.append(f"| {name} | {r['batch']} | {r['tau']:.2f} | {r['tokens_per_step']:.2f} | {acc} | "
                     f"{r['plain_tok_s']:.1f} | {r['spec_tok_s']:.1f} | **{r['speedup']:.2f}x** | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def _write_result(args, row: dict, draft_vocab, state) -> None:
    """One JSON per (drafter, batch): the issue's fields, with the machine, versions, date and command."""
    import json

    from foresight.environment import describe

    name = args.name or Path(args.checkpoint).name
    vocab = "full" if draft_vocab is None else f"v{len(draft_vocab)}"
    drafter = row["drafter"].replace(":", "-k")
    result = {"model": state["config"].get("model_name", name), "drafter": row["drafter"], "k": row["k"],
              "tau": row["tau"], "acceptance": row["acceptance"], "speedup": row["speedup"],
              "batch_size": row["batch"], "identical": row["identical"],
              "draft_vocab": None if draft_vocab is None else len(draft_vocab),
              "tokens_per_step": row["tokens_per_step"], "plain_tok_s": row["plain_tok_s"],
              "spec_tok_s": row["spec_tok_s"], "plain_ms_per_step": row["plain_ms_per_step"],
              "spec_ms_per_step": row["spec_ms_per_step"], "draft_ms_per_step": row["draft_ms_per_step"],
              "steps_per_round": row["steps"],
              "prompts": row["prompts"], "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "repeats": args.repeats, "threads": args.threads, "cpu": cpu_name(), **describe("cpu"),
              "command": "python " + " ".join(sys.argv)}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{name}-{drafter}-{vocab}-b{row['batch']}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="run folder or step_*.pt of a model with MTP / DS-MTP / TOP heads")
    ap.add_argument("--data", type=Path, required=True, help="prepared data folder (prompts from its val split)")
    ap.add_argument("--drafters", default="auto", help="comma-separated: mtp, dsmtp, top, auto, or oracle-mtp etc. "
                    "(perfect drafts at that drafter's cost: the method's ceiling here); ':k' = k drafts per step, "
                    "e.g. mtp:1, ':auto' = chosen per step from measured costs, e.g. ngram:auto (default auto)")
    ap.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default 1)")
    ap.add_argument("--prompts", type=int, default=8, help="number of prompts (default 8)")
    ap.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (default 64)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt (default 128)")
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds; medians are reported (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadiest on a shared box)")
    ap.add_argument("--top-k", type=int, default=0, help="also measure the TOP head as a drafter of k tokens")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    ap.add_argument("--draft-vocab", default="auto", help="drafts over a reduced vocabulary: auto (the checkpoint's "
                    "config draft_vocab, if any), none, or N (the N most frequent ids of the data's train split)")
    ap.add_argument("--packed", nargs="?", const="fp32", choices=("fp32", "bf16"), help="run the model (plain and "
                    "speculative alike) on oneDNN pre-packed Linears (foresight.generate.packed); bf16: not exact")
    ap.add_argument("--results", type=Path, help="also write one JSON per (drafter, batch) into this folder")
    ap.add_argument("--name", default=None, help="results: file-name prefix and model name (default: checkpoint)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    lm, state = TrainableLM.from_checkpoint(args.checkpoint)
    if args.packed:
        pack_linears(lm, dtype=torch.bfloat16 if args.packed == "bf16" else torch.float32)  # and the heads
    prompts = prompts_from(args.data, args.prompts, args.prompt_len)
    draft_vocab = None
    if args.draft_vocab == "auto" and state["config"].get("draft_vocab"):
        draft_vocab = torch.tensor(state["config"]["draft_vocab"])
    elif args.draft_vocab not in ("auto", "none"):
        from cached_heads import frequent_ids

        from foresight.data.shards import PreparedData

        stream = PreparedData.open(args.data).split("train")
        draft_vocab = frequent_ids(torch.from_numpy(stream.read(0, len(stream)).astype(np.int64)),
                                   int(args.draft_vocab), lm.model.cfg.vocab_size)
    header = (f"Self-speculative greedy decoding, {args.checkpoint} (step {state.get('step')}): {args.prompts} "
              f"prompts x {args.prompt_len} tokens from {args.data} (val), {args.new_tokens} new tokens each; "
              f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
              f"{f'pre-packed (oneDNN, {args.packed})' if is_packed(lm) else 'plain (MKL)'} Linears; "
              f"median of {args.repeats} rounds")
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for drafter in args.drafters.split(","):
            rows.append(bench(lm, prompts, args.new_tokens, batch, drafter.strip(), args.repeats, draft_vocab))
            print(f"done: {drafter} batch {batch}: {rows[-1]}", file=sys.stderr, flush=True)
            if args.results:
                _write_result(args, rows[-1], draft_vocab, state)
    text = table(rows, header)
    if args.top_k:
        text += "\n" + top_draft_acceptance(lm, prompts, args.new_tokens, args.top_k).table()
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
