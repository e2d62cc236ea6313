"""The star-graph run's own table and figure (``results.md``, ``results.json``, ``accuracy.png`` in the run
folder): greedy exact match with its 95 % Wilson interval, valid-arm rate, v1 accuracy and the outcome in words, one
row per (run, seed). (A folder of per-cell JSONs across invocations: ``foresight.tasks.stargraph_report``.)
"""

from __future__ import annotations

from pathlib import Path

from foresight.data.stargraph import StarGraphSpec
from foresight.eval.intervals import wilson_interval
from foresight.io import write_json, write_text
from foresight.plot import plot_bands

SOLVED = 0.90  # exact match at or above this: "solved"
SHORTCUT = 0.90  # valid-arm rate at or above this: the edge-following shortcut is learned
CHANCE_BAND = 0.60  # with the shortcut, exact match at or below this counts as "chance" (issue 13's bar)


def outcome(exact: float, valid: float, v1: float | None = None) -> str:
    """What a run did, in words.

    solved: exact match >= 90 %. chance with shortcut: >= 90 % valid arms (it follows edges from the source) but
    exact match <= 60 %. chance on v1, backward shortcut: fewer valid arms, and the answers that get v1 (the one
    token that needs planning) right are right everywhere, with v1 itself at chance — the rest of the path is
    read back from the goal (v2 = the goal's parent, a one-hop lookup that ignores v1), not followed forward;
    ``benchmarks/stargraph_probe.py`` shows the mechanism on a checkpoint. no shortcut: anything else below 90 %.
    """
    if exact >= SOLVED:
        return "solved"
    if valid >= SHORTCUT:
        return "chance with shortcut" if exact <= CHANCE_BAND else "shortcut, above chance"
    if v1 is not None and v1 <= CHANCE_BAND and exact >= 0.9 * v1:
        return "chance on v1, backward shortcut"
    return "no shortcut"


def results_table(spec: StarGraphSpec, results: list[dict]) -> str:
    """One row per (run, seed): exact match with its 95 % Wilson interval, valid-arm rate, v1, the outcome."""
    chance = 1.0 / spec.deg
    n_test = int(results[0]["final"].get("n") or 0) if results else None
    lines = [
        f"Star graph G({spec.deg},{spec.path}), N = {spec.nodes}: greedy exact match on {n_test or '?'} held-out "
        f"graphs (choosing an arm at random gives 1/d = {chance:.0%})",
        "",
        "| run | objective | seed | params | steps | exact match [95 % CI] | valid arm | v1 acc | outcome | "
        "wall-clock s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f = r["final"]
        n = int(f.get("n") or 0)
        lo, hi = wilson_interval(round(f["exact_match"] * n), n)
        steps = f"{r['steps']} of {r['schedule_steps']} (partial)" if r.get("partial") else str(r["steps"])
        lines.append(
            f"| {r['run']} | {r['objective']} | {r['seed']} | {r['params'] / 1e6:.2f}M | {steps} | "
            f"{f['exact_match']:.1%} [{lo:.1%}, {hi:.1%}] | {f['valid_arm']:.1%} | {f['v1_acc']:.1%} | "
            f"{outcome(f['exact_match'], f['valid_arm'], f['v1_acc'])} | {r['wall_clock_s']:.0f} |"
        )
    lines += ["", f"Outcome: solved = exact match ≥ {SOLVED:.0%}; chance with shortcut = valid root-to-leaf arms ≥ "
              f"{SHORTCUT:.0%} (it follows edges from the source) but exact match ≤ {CHANCE_BAND:.0%}; chance on v1, "
              f"backward shortcut = v1 (the first step, the one that needs planning) ≤ {CHANCE_BAND:.0%} and wrong "
              "in almost every wrong answer, the rest of the path right (read back from the goal); no shortcut = "
              "anything else. Exact match, valid arm and v1 are the last evaluation's; the interval is Wilson's."]
    return "\n".join(lines) + "\n"


def held(points: list, row: dict) -> list[list]:
    """A run's [step, value] evaluation points for a plot. A run that early stopping ended (solved: the metric
    passed its threshold at consecutive evaluations) holds its last value at the same spacing to the end of its
    schedule, so a mean over seeds does not drop to the unsolved seeds' once the solved ones stop. A partial run
    (stopped by a signal or the time limit) is drawn as it is. ``row``: the run's result row (``stopped_early``,
    ``partial``, ``schedule_steps``)."""
    points = [[s, v] for s, v in points]
    if row.get("stopped_early") and not row.get("partial") and len(points) >= 2:
        (before, _), (last_step, last) = points[-2], points[-1]
        spacing, end = last_step - before, int(row.get("schedule_steps") or last_step)
        if spacing > 0:  # a hand-edited curve with a repeated step is drawn as it is
            points += [[s, last] for s in range(last_step + spacing, end + 1, spacing)]
    return points


def write_outputs(out_dir: Path, spec: StarGraphSpec, results: list[dict]) -> str:
    """results.md (the table), results.json (one row per (run, seed)) and accuracy.png; returns the table."""
    table = results_table(spec, results)
    write_text(out_dir / "results.md", table)
    write_json(out_dir / "results.json", results)
    series_em: dict[str, list] = {}
    series_valid: dict[str, list] = {}
    for r in results:
        name = f"{r['run']} ({r['objective']})"
        series_em.setdefault(name, []).append(held([[e["step"], e["exact_match"]] for e in r["evals"]], r))
        series_valid.setdefault(name, []).append(held([[e["step"], e["valid_arm"]] for e in r["evals"]], r))
    graph = f"G({spec.deg},{spec.path}), N={spec.nodes}"
    plot_bands([{"title": f"{graph}: test exact match", "ylabel": "exact match", "series": series_em,
                 "hline": (1.0 / spec.deg, "1/d (an arm at random)"), "ylim": (-0.02, 1.02)},
                {"title": f"{graph}: valid root-to-leaf arm", "ylabel": "valid-arm rate", "series": series_valid,
                 "ylim": (-0.02, 1.02)}], out_dir / "accuracy.png")
    return table
