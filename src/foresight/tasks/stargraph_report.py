"""``foresight stargraph report``: a folder of per-cell result JSONs -> README.md table + exact-match plot.

Each JSON is one (run, seed) cell written by ``foresight stargraph run --results DIR``
(``foresight.tasks.stargraph.cell_record``). Cells are grouped by recipe, graph and schedule (scheduled steps,
early stopping on or off); within a group the rows follow Table 5 of the TOP paper (docs/paper-setups.md;
test exact match %, N = 30, one run per cell), each row beside the paper's value, with the mean
and spread over our seeds, every seed's value, the steps actually trained and the command of every cell.
Nothing here runs a model: the README only ever shows what the JSON files in the folder hold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, median, stdev

from foresight.errors import ForesightError
from foresight.io import write_text
from foresight.tasks.stargraph import RESULT_FORMAT

README, PLOT = "README.md", "exact_match.png"
PAPER_STEPS = 7324  # 100 epochs of 300k examples at batch 4096: the schedule behind Table 5
# Table 5 of the TOP paper: test exact match (%) on G(d, l) with N = 30, and parameter counts
# (docs/paper-setups.md). Row order is the paper's.
TABLE5_GRAPHS = ((3, 3), (3, 5), (5, 3), (5, 5))
TABLE5 = {
    "NTP": ("14.2M", (33.8, 32.5, 19.5, 0.1)),
    "MTP-2": ("16.0M", (100.0, 59.0, 19.6, 0.1)),
    "MTP-4": ("19.6M", (100.0, 100.0, 100.0, 19.5)),
    "DS-MTP-2": ("16.6M", (100.0, 32.5, 100.0, 19.2)),
    "DS-MTP-4": ("20.7M", (100.0, 33.6, 100.0, 19.3)),
    "TOP": ("14.2M", (100.0, 100.0, 100.0, 100.0)),
}
TABLE5_NODES = 30
# One colour per objective in the plot, in Table 5 order; seeds differ by line style.
COLOURS = {"NTP": "tab:blue", "MTP-2": "tab:olive", "MTP-4": "tab:green", "DS-MTP-2": "tab:pink",
           "DS-MTP-4": "tab:purple", "TOP": "tab:red"}
LINESTYLES = ("-", "--", ":", "-.")
SOLVED = 0.995  # "solved": test exact match at or above this (the paper recipe's early-stop threshold)
REQUIRED = ("run", "objective", "graph", "recipe", "seed", "schedule_steps", "steps", "final_exact_match",
            "best_exact_match", "v1_acc", "valid_arm", "curve", "wall_clock_s", "command")


def paper_value(objective: str, graph: dict) -> float | None:
    """Table 5's exact match (%) for this objective on this graph, or None where the table has no such cell."""
    if objective not in TABLE5 or graph.get("nodes") != TABLE5_NODES:
        return None
    key = (graph.get("deg"), graph.get("path"))
    return TABLE5[objective][1][TABLE5_GRAPHS.index(key)] if key in TABLE5_GRAPHS else None


def read_cell(path: Path, required: tuple[str, ...], noun: str, writers: str) -> dict:
    """One cell JSON (``stargraph run --results`` / ``bench stargraph``), checked: its format and the ``required``
    fields; a bad file is one line naming it (``noun``: what the reader calls a cell, ``writers``: which commands
    write such files)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ForesightError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        raise ForesightError(f"{path}: not a star-graph {noun} (expected format {RESULT_FORMAT!r}); {writers}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ForesightError(f"{path}: missing field {missing[0]!r}")
    return data


def load_cells(folder: Path) -> list[dict]:
    """Every result JSON in ``folder`` (not recursive), sorted by file name; each gets ``_file``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ForesightError(f"no such results folder: {folder}")
    cells = []
    for path in sorted(folder.glob("*.json")):
        data = read_cell(path, REQUIRED, "result", "results folders hold only files written by `foresight "
                         "stargraph run --results`")
        data["_file"] = path.name
        cells.append(data)
    if not cells:
        raise ForesightError(f"{folder}: no result JSONs; write some with `foresight stargraph run RECIPE "
                             f"--results {folder}`")
    return cells


def group_key(cell: dict) -> tuple:
    g = cell["graph"]
    return (cell["recipe"], g["deg"], g["path"], g["nodes"], cell["schedule_steps"], cell.get("early_stop") is not None)


def group_title(key: tuple) -> str:
    recipe, d, length, n, steps, early = key
    stop = "early stop on" if early else "full schedule"
    return f"G({d},{length}), N = {n} — recipe `{recipe}`, {steps:,}-step schedule, {stop}"


def _objective_rank(objective: str) -> tuple:
    order = list(TABLE5)
    return (order.index(objective) if objective in order else len(order), objective)


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def solved_at(cell: dict) -> int | None:
    """The first evaluated step with test exact match >= SOLVED, or None."""
    return next((step for step, value in cell["curve"] if value >= SOLVED), None)


def summarize(cells: list[dict]) -> dict:
    """Mean and spread of one objective's cells (several seeds): values as fractions in [0, 1]."""
    cells = sorted(cells, key=lambda c: c["seed"])
    finals = [c["final_exact_match"] for c in cells]
    return {
        "n": len(cells),
        "mean": mean(finals),
        "sd": stdev(finals) if len(finals) > 1 else None,
        "min": min(finals),
        "max": max(finals),
        "per_seed": [(c["seed"], c["final_exact_match"], c["steps"]) for c in cells],
        "solved_at": [(c["seed"], solved_at(c)) for c in cells],
        "best": mean(c["best_exact_match"] for c in cells),
        "v1_acc": mean(c["v1_acc"] for c in cells),
        "valid_arm": mean(c["valid_arm"] for c in cells),
        "wall_clock_s": median(c["wall_clock_s"] for c in cells),
        "tokens_per_s": median(c["tokens_per_s"] for c in cells) if all(c.get("tokens_per_s") for c in cells) else None,
        "params": cells[0].get("total_params"),
    }


def _seconds(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def _mean_cell(s: dict) -> str:
    if s["n"] == 1:
        return _pct(s["mean"])
    return f"{_pct(s['mean'])} ± {_pct(s['sd'])} ({_pct(s['min'])}–{_pct(s['max'])})"


def group_table(key: tuple, cells: list[dict]) -> str:
    """Markdown table of one group: Table 5's rows (run or not), then objectives the table lacks."""
    graph = {"deg": key[1], "path": key[2], "nodes": key[3]}
    by_objective: dict[str, list[dict]] = {}
    for c in cells:
        by_objective.setdefault(c["objective"], []).append(c)
    has_paper = any(paper_value(o, graph) is not None for o in TABLE5)
    rows = (list(TABLE5) if has_paper else []) + sorted(set(by_objective) - (set(TABLE5) if has_paper else set()),
                                                        key=_objective_rank)
    head = ["objective", "params (paper / ours)", "paper Table 5 %", "ours: final exact match %", "seeds",
            "per seed: final % @ steps trained", f"first eval ≥ {100 * SOLVED:g} % (step)", "best %", "v1 acc %",
            "valid arm %", "wall-clock s / run", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for objective in rows:
        paper = paper_value(objective, graph)
        paper_params = TABLE5[objective][0] if objective in TABLE5 and has_paper else "—"
        if objective not in by_objective:
            lines.append(f"| {objective} | {paper_params} / — | {'—' if paper is None else f'{paper:g}'} | not run "
                         "| 0 | | | | | | | |")
            continue
        s = summarize(by_objective[objective])
        ours_params = f"{s['params'] / 1e6:.{1 if s['params'] >= 1e6 else 3}f}M" if s["params"] else "—"
        per_seed = ", ".join(f"s{seed}: {_pct(v)} @ {steps:,}" for seed, v, steps in s["per_seed"])
        rate = f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "—"
        solved = ", ".join(f"s{seed}: {'—' if step is None else f'{step:,}'}" for seed, step in s["solved_at"])
        lines.append(f"| {objective} | {paper_params} / {ours_params} | {'—' if paper is None else f'{paper:g}'} | "
                     f"{_mean_cell(s)} | {s['n']} | {per_seed} | {solved} | {_pct(s['best'])} | {_pct(s['v1_acc'])} | "
                     f"{_pct(s['valid_arm'])} | {_seconds(s['wall_clock_s'])} | {rate} |")
    return "\n".join(lines) + "\n"


def _settings(cells: list[dict]) -> str:
    """One line on what the cells share: data, batch, schedule, hardware and software, dates."""
    c = cells[0]
    train = c.get("train") or {}
    devices = sorted({x.get("device_name") or x.get("device") or "?" for x in cells})
    torches = sorted({x.get("torch") or "?" for x in cells})
    dates = sorted(x.get("date", "")[:10] for x in cells if x.get("date"))
    span = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "?")
    data = (f"{c.get('train_size'):,} train / {c.get('test_size'):,} test graphs" if c.get("train_size")
            else "data files")
    schedule = (f"batch {c.get('batch_size')}, lr {train.get('lr')} (warm-up {train.get('warmup_steps')} steps) "
                f"cosine to {train.get('min_lr')} over {c['schedule_steps']:,} steps") if train else ""
    early = c.get("early_stop")
    stop = (f"stop once {early['metric']} ≥ {early['threshold']} for {early['patience']} evaluations in a row"
            if early else "no early stopping")
    every = f"test-set evaluation every {train.get('eval_every')} steps" if train.get("eval_every") else ""
    line = "; ".join(x for x in (data + f" (data seed {c.get('data_seed')})", schedule, every, stop,
                                 f"{', '.join(devices)}, torch {', '.join(torches)}", span) if x)
    paper = {"train graphs": (c.get("train_size"), 300000), "test graphs": (c.get("test_size"), 10000),
             "batch": (c.get("batch_size"), 4096), "steps": (c["schedule_steps"], PAPER_STEPS)}
    diff = [f"{k} {ours:,} (paper {theirs:,})" for k, (ours, theirs) in paper.items()
            if isinstance(ours, int) and ours != theirs]
    return line + (f". **Differs from the paper's setup in:** {', '.join(diff)}." if diff else ".")


def render(cells: list[dict], plot_name: str | None = PLOT) -> str:
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(group_key(c), []).append(c)
    out = [
        "# Star graph: our runs beside the TOP paper's Table 5",
        "",
        f"Written by `foresight stargraph report` from the {len(cells)} result JSON file(s) in this folder (one per "
        "run and seed, each written by `foresight stargraph run ... --results` at the end of a finished run); "
        "regenerate it rather than editing it.",
        "",
        "Metric: exact match of the greedily decoded path on the whole test set, at the last evaluation (the run's "
        "end or its early stop); `best` is the highest of any evaluation. Paper: Table 5 of the TOP paper, one run "
        f"per cell, {PAPER_STEPS:,} steps at batch 4096, N = 30. Seeds set `train.seed` (model initialisation and "
        "batch order); the data set is the same for every seed (`stargraph.seed`), as in the paper. "
        "Our trunk is Llama-style (RMSNorm, RoPE, SwiGLU; the paper's GPT-2 parameter count) trained in bf16 "
        "autocast (the paper: GPT-2, fp16). `a ± b (c–d)`: mean ± standard deviation over seeds (min–max).",
        "",
    ]
    for key in sorted(groups, key=lambda k: (k[1:4], -k[4], k[0], k[5])):
        members = sorted(groups[key], key=lambda c: (_objective_rank(c["objective"]), c["seed"]))
        out += [f"## {group_title(key)}", "", _settings(members), "", group_table(key, members)]
    if plot_name:
        out += [f"![test exact match vs step]({plot_name})", ""]
    out += ["## Commands", "", "Each cell, reproduced by one command (from the repository root; `foresight` is "
            "`python -m foresight` with `src/` on `PYTHONPATH` where the package is not installed):", "",
            "| objective | seed | graph | schedule | steps trained | final % | file | command |",
            "|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (group_key(c)[1:4], _objective_rank(c["objective"]), c["seed"])):
        g = c["graph"]
        command = (c.get("command") or "—").replace("|", "\\|")
        schedule = f"{c['schedule_steps']:,}" + ("" if c.get("early_stop") else " (full)")
        out.append(f"| {c['objective']} | {c['seed']} | G({g['deg']},{g['path']}) | {schedule} | {c['steps']:,} | "
                   f"{_pct(c['final_exact_match'])} | `{c['_file']}` | `{command}` |")
    return "\n".join(out) + "\n"


def plot_cells(cells: list[dict], path: Path) -> Path:
    """Test exact match vs step: one panel per group, one colour per objective, one line style per seed."""
    from foresight.plot import plot_panels

    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(group_key(c), []).append(c)
    panels = []
    extra = iter(["tab:orange", "tab:brown", "tab:gray", "tab:cyan"] * 8)
    colours = dict(COLOURS)
    for key in sorted(groups, key=lambda k: (k[1:4], -k[4], k[0], k[5])):
        members = sorted(groups[key], key=lambda c: (_objective_rank(c["objective"]), c["seed"]))
        seeds = sorted({c["seed"] for c in members})
        curves, styles = {}, {}
        for c in members:
            name = f"{c['objective']} s{c['seed']}"
            curves[name] = c["curve"]
            colour = colours.setdefault(c["objective"], next(extra))
            styles[name] = {"color": colour, "linestyle": LINESTYLES[seeds.index(c["seed"]) % len(LINESTYLES)]}
        title = group_title(key).replace("`", "")
        panels.append({"title": title, "curves": curves, "styles": styles, "hline": (1.0 / key[1], "chance (1/d)")})
    return plot_panels(panels, path, ylabel="test exact match", ylim=(-0.02, 1.02))


def write_report(folder: Path) -> tuple[Path, Path]:
    """Write ``folder/README.md`` and ``folder/exact_match.png`` from the JSONs in ``folder``."""
    folder = Path(folder)
    cells = load_cells(folder)
    plot = plot_cells(cells, folder / PLOT)
    readme = folder / README
    write_text(readme, render(cells, PLOT))
    return readme, plot
