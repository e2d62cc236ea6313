"""HumanEval pass@1 and decoding speed, plain greedy vs self-speculative, on one model (issue 23, item 4).

    python benchmarks/humaneval.py RUN [--speculative ngram] [--limit N] [--threads 1] \
        [--jsonl results/decode/humaneval-smollm2.jsonl] [--md results/decode/humaneval-smollm2.md]
    python benchmarks/humaneval.py RUN --report-only ...     # only rewrite the table from the .jsonl so far
    python benchmarks/humaneval.py --sandbox-check            # every canonical solution passes, every empty fails

Runs ``foresight eval RUN --tasks humaneval --compare-speculative KIND --out JSONL`` (every problem decoded both
ways, alternately, in one process, so both see the same load; the plain completion is tested in the sandbox;
resumable: problems already in the .jsonl are kept), then writes a markdown table: pass@1 with its 95 % interval
for both, how many completions are identical, tokens/s, the mean over problems of the per-problem speed-up
(speculative tokens/s over plain tokens/s) and the ratio of total decode times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from foresight.environment import cpu_name, describe
from foresight.eval import humaneval as he


def table(rows: list[dict], kind: str) -> str:
    s = he.summarize(rows)
    sp = s["speculative"]
    ratios = sorted(r["seconds"] / r["speculative"]["seconds"] for r in rows)  # per problem, ascending
    low, high = s["interval95"]
    slow, shigh = he.wilson(round(sp["pass@1"] * s["problems"]), s["problems"])
    lines = [
        "| decoding | problems | pass@1 | 95 % interval | identical completions | tokens decoded | decode s | "
        "tokens/s | speed-up (mean over problems) | speed-up (total time) | tau |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| plain greedy | {s['problems']} | {s['pass@1']:.1%} | {low:.1%} - {high:.1%} | - | {s['new_tokens']:,} | "
        f"{s['decode_seconds']:.0f} | {s['tokens_per_s']:.1f} | 1.00x | 1.00x | 1.00 |",
        f"| speculative {kind} | {s['problems']} | {sp['pass@1']:.1%} | {slow:.1%} - {shigh:.1%} | "
        f"{sp['same_completions']}/{s['problems']} | {sp['new_tokens']:,} | {sp['decode_seconds']:.0f} | "
        f"{sp['tokens_per_s']:.1f} | **{sp['mean_speedup']:.2f}x** | {sp['time_ratio']:.2f}x | {sp['mean_tau']:.2f} |",
        "",
        f"Per-problem speed-up (plain seconds over {kind} seconds, the same completion): median "
        f"{statistics.median(ratios):.2f}x, min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x; problems faster with {kind}: "
        f"{sum(x > 1 for x in ratios)}/{len(ratios)}. Completion lengths (plain, new tokens): median "
        f"{statistics.median(r['new_tokens'] for r in rows):.0f}, max {max(r['new_tokens'] for r in rows)}.",
    ]
    results = {}
    for r in rows:
        key = r["result"] if r["result"] in ("passed", "timed out") else r["result"].split(":")[1].strip() or "failed"
        results[key] = results.get(key, 0) + 1
    top = sorted(results.items(), key=lambda kv: -kv[1])[:6]
    lines.append("Outcomes (plain): " + ", ".join(f"{k} {v}" for k, v in top) + ".")
    return "\n".join(lines)


def sandbox_check(timeout: float = 5.0) -> str:
    """The harness on the data alone: every canonical solution should pass and every empty completion fail."""
    import time

    problems = he.load_problems()
    t0 = time.perf_counter()
    canon = [p.task_id for p in problems if not he._check(p, p.canonical_solution, timeout)["passed"]]
    empty = [p.task_id for p in problems if he._check(p, "", timeout)["passed"]]
    n = len(problems)
    return (f"canonical solutions passing: {n - len(canon)}/{n} {canon or ''}; empty completions passing: "
            f"{len(empty)}/{n} {empty or ''} ({time.perf_counter() - t0:.0f}s)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", help="a foresight run / import folder or a Hugging Face model folder")
    ap.add_argument("--speculative", default="ngram", help="the drafter compared with plain greedy (default ngram)")
    ap.add_argument("--limit", type=int, help="the first N problems only")
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", type=Path, default=Path("results/decode/humaneval-smollm2.jsonl"))
    ap.add_argument("--md", type=Path, default=Path("results/decode/humaneval-smollm2.md"))
    ap.add_argument("--note", default="", help="a line on the machine's state (e.g. 'shared with 8 jobs')")
    ap.add_argument("--report-only", action="store_true", help="do not decode: tabulate the .jsonl as it is")
    ap.add_argument("--sandbox-check", action="store_true", help="only run every canonical solution and every "
                    "empty completion in the sandbox")
    args = ap.parse_args(argv)
    if args.sandbox_check:
        print(sandbox_check())
        return
    if args.run is None:
        ap.error("RUN is required (unless --sandbox-check)")
    torch.set_num_threads(args.threads)
    command = "python benchmarks/humaneval.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        from foresight.cli.main import main as foresight

        eval_args = ["eval", str(args.run), "--tasks", "humaneval", "--compare-speculative", args.speculative,
                     "--max-new-tokens", str(args.max_new_tokens), "--out", str(args.jsonl)]
        if args.limit:
            eval_args += ["--limit", str(args.limit)]
        code = foresight(eval_args)
        if code:
            raise SystemExit(code)
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    env = describe("cpu")
    md = [f"# HumanEval (offline) on {args.run.name}: plain greedy vs speculative {args.speculative}",
          "",
          f"Machine: {cpu_name()}, {args.threads} thread(s); torch {env['torch']}, python {env['python']}, foresight "
          f"{env['foresight']} (commit {env['git_commit']}); {env['date']}." + (f" {args.note}" if args.note else ""),
          "",
          "```bash",
          command,
          f"# = foresight eval {args.run} --tasks humaneval --compare-speculative {args.speculative} "
          f"--max-new-tokens {args.max_new_tokens} --out {args.jsonl}",
          "```",
          "",
          "Greedy completions of each prompt as it is (no chat template), stopped at the usual stop sequences "
          "(a line starting `def `, `class `, `if __name__`, `print(`, `#`) or end-of-text, cut at the first one; "
          "each program (prompt + completion + tests + `check(entry_point)`) run in foresight's subprocess sandbox "
          "(`python -I`, a temporary folder, rlimits, 5 s). Each problem is decoded plainly and speculatively in "
          "alternating order in one process; seconds are decode time (prefill included), not the tests. tokens/s "
          "counts the completion's tokens (plain's, up to the stop) for both rows: a speculative step may decode a "
          "few tokens past the stop that are cut ('tokens decoded'). Speed-up per problem = plain seconds / "
          "speculative seconds; 'mean over problems' averages that, 'total time' divides the sums.",
          "",
          table(rows, args.speculative),
          ""]
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
