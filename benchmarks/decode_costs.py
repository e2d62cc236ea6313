"""What a decoding forward over T new tokens costs, plain (MKL) Linears vs oneDNN pre-packed ones, against the
memory-bandwidth floor.

    python benchmarks/decode_costs.py CHECKPOINT [--max-t 16] [--cache 200] [--threads 1,2] [--repeats 15]
        [--hints 1,16] [--bf16] [--out results/decode/costs-packed-cpu.md]

For each thread count: the model's weights are read once per forward, so the floor of a decoding step is
(bytes of the Linears' weights) / (read bandwidth). Read bandwidth is measured here with a big copy (512 MiB
source: bytes read / time, the written bytes not counted, best of 5) and with a big sum (reads only). Then, after a
prefill of ``--cache`` tokens, one forward over T = 1..max_t new tokens (trunk + output head + argmax, batch 1;
the cache is cut back after each) is timed for the plain model and for a copy whose Linears are packed
(``foresight.generate.packed``; the copy shares the weights). Variants and T are interleaved in every round, so
load on a shared machine hits all alike; medians of ``--repeats`` rounds. Costs are given in units of the plain
T = 1 step (the speculative decoder's unit) and of each variant's own T = 1 step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from foresight.environment import cpu_name, describe
from foresight.generate.packed import pack_linears
from foresight.train.lm import TrainableLM


def read_bandwidth(mib: int = 512, repeats: int = 5) -> tuple[float, float]:
    """(copy, sum) read bandwidth in GB/s, best of ``repeats``: a copy reads and writes ``mib`` MiB (we count the
    bytes read), a sum only reads them."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    copy_t, sum_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        copy_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        src.sum()
        sum_t.append(time.perf_counter() - t0)
    nbytes = src.numel() * 4
    return nbytes / min(copy_t) / 1e9, nbytes / min(sum_t) / 1e9


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the distinct Linear weights and biases (read once per forward; a tied head counts once)."""
    seen = {}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            for p in (m.weight, m.bias):
                if p is not None:
                    seen[id(p)] = p.numel() * p.element_size()
    return sum(seen.values())


def step_fn(model, caches, block: torch.Tensor, keep: int):
    def step():
        out = model.trunk(block, caches)
        model.lm_head(out.hidden).argmax(-1)
        for c in caches:
            c.truncate(keep)
    return step


@torch.no_grad()
def measure(lm, threads: int, max_t: int, cache: int, repeats: int, hints: list[int], bf16: bool) -> dict:
    torch.set_num_threads(threads)
    plain = lm.model
    variants = {"mkl": plain}
    for h in hints:  # copies sharing the weights, packed for h rows
        twin = copy.deepcopy(plain, memo={id(p): p for p in plain.parameters()})
        variants[f"packed{h}"] = pack_linears(twin, rows=h)
    if bf16:  # not exact: reported apart (agreement of greedy tokens)
        twin = copy.deepcopy(plain, memo={id(p): p for p in plain.parameters()})
        variants[f"packed{hints[-1]}-bf16"] = pack_linears(twin, rows=hints[-1], dtype=torch.bfloat16)
    ids = torch.randint(0, plain.cfg.vocab_size, (1, cache + max_t), generator=torch.Generator().manual_seed(0))
    steps = {}
    for name, model in variants.items():
        caches = model.new_caches()
        model.trunk(ids[:, :cache], caches)
        for t in range(1, max_t + 1):
            steps[name, t] = step_fn(model, caches, ids[:, cache : cache + t], cache)
    for fn in steps.values():  # warm-up (oneDNN builds its kernels on first use per shape)
        fn()
    times = {key: [] for key in steps}
    for _ in range(repeats):
        for t in range(1, max_t + 1):
            for name in variants:
                t0 = time.perf_counter()
                steps[name, t]()
                times[name, t].append(time.perf_counter() - t0)
    ms = {key: 1000 * statistics.median(v) for key, v in times.items()}
    # The variants' outputs agree (greedy tokens of the longest block) - a sanity check, the tests check more.
    logits = {}
    for name, model in variants.items():
        caches = model.new_caches()
        model.trunk(ids[:, :cache], caches)
        logits[name] = model.lm_head(model.trunk(ids[:, cache:], caches).hidden)
    copy_bw, sum_bw = read_bandwidth()
    exact = [n for n in variants if not n.endswith("bf16")]
    bf16_note = ""
    if bf16:
        name = [n for n in variants if n.endswith("bf16")][0]
        bf16_note = agreement(plain, variants[name], ids[:, :cache], logits[name], logits["mkl"])
    return {"bf16_note": bf16_note, "threads": threads, "variants": list(variants), "ms": ms,
            "copy_gbs": copy_bw, "sum_gbs": sum_bw,
            "same_tokens": all(torch.equal(logits[n].argmax(-1), logits["mkl"].argmax(-1)) for n in exact),
            "max_logit_diff": max(float((logits[n] - logits["mkl"]).abs().max()) for n in exact)}


def agreement(plain, low, prompt: torch.Tensor, low_logits, ref_logits, new: int = 64) -> str:
    """How far bf16-packed greedy decoding stays with fp32 greedy: the first differing token over ``new`` tokens
    from 4 prompt windows, and the logits' relative error on the timed block."""
    from foresight.generate import generate

    firsts = []
    for start in range(0, prompt.shape[1] - 48 + 1, max((prompt.shape[1] - 48) // 3, 1))[:4]:
        p = prompt[:, start : start + 48]
        a, b = generate(plain, p, new)[0, 48:], generate(low, p, new)[0, 48:]
        diff = (a != b).nonzero()
        firsts.append(int(diff[0]) if diff.numel() else new)
    rel = float((low_logits - ref_logits).abs().max() / ref_logits.abs().max())
    return (f"bf16-packed vs fp32: logits max relative error {rel:.1e}; greedy tokens identical for the first "
            f"{firsts} of {new} new tokens on 4 prompts (random-token prompts: a harsh case; {new} = never differed).")


def report(r: dict, weight_bytes: int, max_t: int) -> str:
    ms, names = r["ms"], r["variants"]
    base = ms["mkl", 1]
    bw = max(r["copy_gbs"], r["sum_gbs"])
    floor = weight_bytes / bw / 1e6  # ms
    steps = "; ".join(f"{n} {ms[n, 1]:.1f} ms = **{ms[n, 1] / floor:.2f}x**" for n in names)
    lines = [f"### {r['threads']} thread(s)", "",
             f"Read bandwidth: copy {r['copy_gbs']:.1f} GB/s, sum {r['sum_gbs']:.1f} GB/s; weights read per step "
             f"{weight_bytes / 1e6:.0f} MB -> floor {floor:.1f} ms per step (at the higher bandwidth).", "",
             f"Plain step (T = 1) against the floor (target: within 1.5x): {steps}.", "",
             f"All variants vs MKL logits over a {max_t}-token block: max |diff| {r['max_logit_diff']:.2e}, greedy "
             f"tokens {'identical' if r['same_tokens'] else 'DIFFERENT'} (fp32 variants).", "",
             *([r["bf16_note"], ""] if r["bf16_note"] else []),
             "Cost of a forward over T new tokens in plain (MKL, T = 1) steps, and each variant's ms:", "",
             "| T | " + " | ".join(f"{n} / plain step" for n in names) + " | " + " | ".join(f"{n} ms" for n in names)
             + " |", "|---|" + "---|" * (2 * len(names))]
    for t in range(1, max_t + 1):
        lines.append(f"| {t} | " + " | ".join(f"{ms[n, t] / base:.2f}" for n in names) + " | "
                     + " | ".join(f"{ms[n, t]:.1f}" for n in names) + " |")
    lines.append("")
    for n in names:
        worst = max(ms[n, t] / base for t in range(2, min(max_t, 9) + 1))
        lines.append(f"- {n}: verifying 1..8 drafts (T = 2..9) costs at most **{worst:.2f}** plain steps "
                     "(target: <= 1.2).")
    return "\n".join(lines + [""])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--max-t", type=int, default=16)
    ap.add_argument("--cache", type=int, default=200, help="tokens in the KV cache before the timed forward")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--hints", default="1,16", help="packed variants: the row counts oneDNN's layout is tuned for")
    ap.add_argument("--bf16", action="store_true", help="also time a bf16-packed variant (not exact; its agreement "
                    "with fp32 greedy decoding is reported)")
    ap.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    ap.add_argument("--note", default="Say whether other jobs shared the machine (--note).",
                    help="one sentence on the conditions, e.g. 'Quiet machine: nothing else ran.'")
    args = ap.parse_args(argv)
    lm, _ = TrainableLM.from_checkpoint(args.checkpoint)
    lm.model.eval()
    weight_bytes = linear_bytes(lm.model)
    env = describe("cpu")
    header = [f"# Decoding forward cost: plain (MKL) vs pre-packed (oneDNN) Linears, {args.checkpoint}", "",
              f"Command: `python {' '.join(sys.argv)}`", "",
              f"Machine: {cpu_name()}, {torch.get_num_threads()} threads available to torch; torch {env['torch']}, "
              f"python {env['python']}, foresight {env['foresight']} ({env['git_commit']}), {env['date']}. "
              f"Batch 1, fp32, {args.cache} tokens cached, medians of {args.repeats} interleaved rounds. "
              "mkl = PyTorch's default CPU Linear; packedH = `foresight.generate.packed.pack_linears(model, rows=H)` "
              f"(oneDNN layout tuned for H rows). {args.note}", ""]
    parts = []
    for threads in (int(t) for t in args.threads.split(",")):
        r = measure(lm, threads, args.max_t, args.cache, args.repeats, [int(h) for h in args.hints.split(",")],
                    args.bf16)
        parts.append(report(r, weight_bytes, args.max_t))
        print(parts[-1], flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(header + parts))


if __name__ == "__main__":
    main()
