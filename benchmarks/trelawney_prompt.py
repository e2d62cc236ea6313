"""A TRELAWNEY star-graph cell under its two prompts: the plain one (ending '=') and '= <T>' (the model writes
its own lookahead span first, then '</T>' and the path).

For each finished cell folder (its last checkpoint; the test set regenerated from the checkpoint's recipe) the
table gives, per prompt: exact match, v1 accuracy and valid arm after removing every '<T> … </T>'
(``foresight.eval.stargraph.evaluate``), and for '= <T>' also how often the span the model wrote is closed and a
contiguous piece of the true answer (a correct lookahead), and how often it holds the goal.

    python benchmarks/trelawney_prompt.py RUN_DIR [RUN_DIR ...] --out results/stargraph-cpu/trelawney/prompt.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from foresight.environment import describe
from foresight.eval.stargraph import evaluate, greedy_paths
from foresight.tasks.stargraph import StarGraphTaskConfig, load_split
from foresight.train.lm import TrainableLM


def span_quality(model, test, spec, max_span: int) -> dict:
    """Prompt '= <T>' and read what the model writes before '</T>': closed, a piece of the answer, has the goal."""
    prefixes, paths = test.prefixes, test.paths  # (B, P), (B, l)
    opened = torch.full_like(prefixes[:, :1], spec.open_id)
    out = greedy_paths(model, torch.cat([prefixes, opened], dim=1), max_span + 1).tolist()  # span + '</T>'
    closed = piece = goal = 0
    for row, path in zip(out, paths.tolist()):
        if spec.close_id not in row:
            continue
        span = row[: row.index(spec.close_id)]
        closed += 1
        piece += bool(span) and any(path[i : i + len(span)] == span for i in range(len(path)))
        goal += path[-1] in span
    n = len(out)
    return {"span_closed": closed / n, "span_is_answer_piece": piece / n, "span_has_goal": goal / n}


@torch.no_grad()
def measure(run_dir: Path) -> dict:
    ckpts = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.suffix in (".pt", ".safetensors"))
    if not ckpts:
        raise SystemExit(f"{run_dir}: no checkpoints/step_*; give a finished stargraph cell folder")
    lm, state = TrainableLM.from_checkpoint(ckpts[-1])
    task = StarGraphTaskConfig(**state["config"]["recipe"]["stargraph"])
    if task.lookahead is None:
        raise SystemExit(f"{run_dir}: its recipe has no stargraph.trelawney section")
    spec = task.spec()
    test = load_split(task, spec, "test")
    model = lm.model.eval()
    plain = evaluate(model, test, spec, batch_size=task.eval_batch_size, trelawney=task.lookahead)
    opened = evaluate(model, test, spec, batch_size=task.eval_batch_size,
                      trelawney=replace(task.lookahead, prompt_open=True))
    return {"run": str(run_dir), "step": int(ckpts[-1].stem.split("_")[-1]), "plain": plain, "open": opened,
            **span_quality(model, test, spec, min(task.lookahead.max_span, spec.path))}


def table(rows: list[dict]) -> str:
    pct = "{:.1%}".format
    lines = ["| cell | step | prompt '=': exact / v1 / valid | prompt '= <T>': exact / v1 / valid | span closed | "
             "span = piece of the answer | span has goal |", "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        a, b = r["plain"], r["open"]
        lines.append(f"| {r['run']} | {r['step']:,} | {pct(a['exact_match'])} / {pct(a['v1_acc'])} / "
                     f"{pct(a['valid_arm'])} | {pct(b['exact_match'])} / {pct(b['v1_acc'])} / {pct(b['valid_arm'])} "
                     f"| {pct(r['span_closed'])} | {pct(r['span_is_answer_piece'])} | {pct(r['span_has_goal'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="TRELAWNEY stargraph cell folders (with checkpoints/)")
    p.add_argument("--out", type=Path, help="write the table (and machine, versions, date, command) as markdown here")
    args = p.parse_args()
    torch.set_num_threads(1)
    text = table([measure(run) for run in args.runs])
    print(text)
    if args.out:
        env = describe(torch.device("cpu"))
        head = (f"# TRELAWNEY star-graph cells under the two prompts\n\n{env.get('device')}, torch "
                f"{env.get('torch')}, python {env.get('python')}, foresight {env.get('foresight')} "
                f"(commit {env.get('git_commit')}), {env.get('date')}"
                f"; command: `{shlex.join(['python', *sys.argv])}`\n\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(head + text + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
