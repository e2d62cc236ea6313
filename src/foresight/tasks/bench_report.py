"""The objective benchmark's leaderboard: a folder of star-graph cell JSONs -> ``README.md`` + ``exact_match.png``.

Reads ``DIR/*.json`` and ``DIR/<graph>/*.json`` (``foresight bench stargraph`` writes one sub-folder per graph;
``foresight stargraph run --results`` writes a flat folder: both are read). Cells are grouped per graph (its
sub-folder, or for a flat folder its recipe, G(d, l), N and schedule); per group one row per objective (the cell's
run name):

- seeds run (finished cells; partial ones — stopped before the end of their schedule — are listed, not counted),
- seeds solved: final test exact match >= ``SOLVED`` (stargraph_tables: 90 %),
- mean final exact match over seeds with a 95 % Student-t interval over seeds (mean ± t_{n-1} s / √n; none for one
  seed), and every seed's value,
- mean valid-arm rate, the outcome of every seed in words (``stargraph_tables.outcome``), counted,
- steps to solve: the first evaluated step with exact match >= ``SOLVED``, median over the solved seeds,
- wall-clock per cell (median seconds).

Then the machine, versions and dates the cells record, and the command of every cell. Nothing here runs a model.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from statistics import mean, median, stdev

from foresight.errors import ForesightError
from foresight.io import write_text
from foresight.tasks.stargraph_report import read_cell
from foresight.tasks.stargraph_tables import SOLVED, held, outcome

README, PLOT = "README.md", "exact_match.png"
REQUIRED = ("run", "objective", "graph", "recipe", "seed", "schedule_steps", "steps", "final_exact_match",
            "valid_arm", "curve", "wall_clock_s")
# Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1 .. 30 (any table of the t distribution); above 30
# the normal 1.96 is within 4 %.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """95 % interval of the mean over seeds: mean ± t_{n-1} · s / √n, clipped to [0, 1]; None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    half = t * stdev(values) / math.sqrt(n)
    m = mean(values)
    return max(0.0, m - half), min(1.0, m + half)


def load_cells(folder: Path) -> list[dict]:
    """Every cell JSON of ``folder`` and its sub-folders (one level); each gets ``_group`` (its sub-folder, or
    "" at the top) and ``_file``. A ``-partial`` file whose finished cell is also there is left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ForesightError(f"no such results folder: {folder}")
    paths = sorted(folder.glob("*.json")) + sorted(folder.glob("*/*.json"))
    cells = []
    for path in paths:
        if path.stem.endswith("-partial") and path.with_name(path.stem[:-len("-partial")] + ".json").is_file():
            continue  # resumed and finished since
        data = read_cell(path, REQUIRED, "cell JSON", "a results folder holds only files written by `foresight "
                         "bench stargraph` or `foresight stargraph run --results`")
        data["_group"] = "" if path.parent == folder else path.parent.name
        data["_file"] = path.relative_to(folder).as_posix()
        cells.append(data)
    if not cells:
        raise ForesightError(f"{folder}: no cell JSONs; run `foresight bench stargraph GRID` first")
    return cells


def group_key(cell: dict) -> tuple:
    g = cell["graph"]
    return (cell["_group"], cell["recipe"], g["deg"], g["path"], g["nodes"], cell["schedule_steps"],
            cell.get("early_stop") is not None)


def group_title(key: tuple, cells: list[dict]) -> str:
    name, recipe, d, length, n, steps, early = key
    model = (cells[0].get("config") or {}).get("model") or {}
    size = (f"width {model['hidden_size']}, {model['n_layers']} layers, "
            if "hidden_size" in model and "n_layers" in model else "")
    train_size = cells[0].get("train_size")
    data = f"{train_size:,} training graphs, " if isinstance(train_size, int) else ""
    head = f"{name}: " if name else ""
    return (f"{head}G({d},{length}), N = {n} — recipe {recipe}, {size}{data}{steps:,} steps"
            f"{', early stopping' if early else ''} (an arm at random: {1 / d:.0%})")


def solved_at(cell: dict, threshold: float = SOLVED) -> int | None:
    """The first evaluated step with exact match >= threshold (None: never)."""
    return next((int(step) for step, em in cell["curve"] if em >= threshold), None)


def summarize(cells: list[dict]) -> dict:
    """One objective's row from its cells (module docstring)."""
    done = sorted((c for c in cells if not c.get("partial")), key=lambda c: c["seed"])
    partial = sorted((c for c in cells if c.get("partial")), key=lambda c: c["seed"])
    em = [float(c["final_exact_match"]) for c in done]
    solved = [c for c in done if c["final_exact_match"] >= SOLVED]
    steps = [s for s in (solved_at(c) for c in solved) if s is not None]
    outcomes = Counter(outcome(c["final_exact_match"], c["valid_arm"], c.get("v1_acc")) for c in done)
    return {
        "objective": cells[0]["objective"],
        "seeds": len(done),
        "solved": len(solved),
        "mean": mean(em) if em else None,
        "interval": t_interval(em),
        "per_seed": [(c["seed"], float(c["final_exact_match"])) for c in done],
        "valid_arm": mean(float(c["valid_arm"]) for c in done) if done else None,
        "outcomes": outcomes,
        "steps_to_solve": median(steps) if steps else None,
        "wall_s": median(float(c["wall_clock_s"]) for c in done) if done else None,
        "partial": [(c["seed"], c["steps"], c["schedule_steps"], c["final_exact_match"]) for c in partial],
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _outcome_words(counts: Counter) -> str:
    return ", ".join(f"{word} ×{n}" if n > 1 else word for word, n in counts.most_common()) or "–"


ORDER = ("ntp", "top", "mtp", "dsmtp", "fsp", "nextlat", "mutor", "trelawney")  # rows: the baseline first


def _row_rank(run: str) -> tuple:
    """NTP, TOP, MTP..., DS-MTP..., FSP, NextLat, MuToR, TRELAWNEY (by run-name prefix), then the rest by name."""
    rank = next((i for i, prefix in enumerate(ORDER) if run.lower().startswith(prefix)), len(ORDER))
    return rank, run


def group_table(cells: list[dict]) -> str:
    runs: dict[str, list[dict]] = {}
    for c in sorted(cells, key=lambda c: _row_rank(c["run"])):
        runs.setdefault(c["run"], []).append(c)
    lines = [f"| objective | objectives | seeds | solved (≥ {SOLVED:.0%}) | exact match % mean [95 % CI] | per seed "
             "(seed: %) | valid arm % | outcome | steps to solve (median) | wall-clock s / cell |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run, rc in runs.items():
        s = summarize(rc)
        ci = f" [{_pct(s['interval'][0])}, {_pct(s['interval'][1])}]" if s["interval"] else ""
        per = ", ".join(f"{seed}: {100 * v:.1f}" for seed, v in s["per_seed"]) or "–"
        if s["partial"]:
            per += "; partial: " + ", ".join(f"{seed} (step {st} of {sch}: {_pct(em)})"
                                             for seed, st, sch, em in s["partial"])
        steps = "–" if s["steps_to_solve"] is None else f"{s['steps_to_solve']:g}"
        wall = "–" if s["wall_s"] is None else f"{s['wall_s']:.0f}"
        lines.append(f"| {run} | {s['objective']} | {s['seeds']} | {s['solved']} | {_pct(s['mean'])}{ci} | {per} | "
                     f"{_pct(s['valid_arm'])} | {_outcome_words(s['outcomes'])} | {steps} | {wall} |")
    return "\n".join(lines)


def _provenance(cells: list[dict]) -> list[str]:
    def values(key: str) -> str:
        found = sorted({str(c.get(key)) for c in cells if c.get(key) is not None})
        return ", ".join(found) if found else "not recorded"

    dates = sorted(str(c["date"]) for c in cells if c.get("date"))
    return [f"- machine: {values('device_name')} ({values('device')})",
            f"- versions: foresight {values('foresight')}, torch {values('torch')}, Python {values('python')}; "
            f"commit {values('git_commit')}",
            f"- cells run {dates[0]} .. {dates[-1]}" if dates else "- dates: not recorded",
            f"- report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]


def render(folder: Path, cells: list[dict], plot_name: str | None = PLOT) -> str:
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(group_key(c), []).append(c)
    lines = [f"# Objective benchmark: {Path(folder).name}", "",
             f"Star-graph path finding (TOP paper §5.3): greedy exact match on held-out graphs at the end of each "
             f"cell's schedule, one cell per (graph, objective, seed). Solved = final exact match ≥ {SOLVED:.0%}; "
             "the interval is a 95 % Student-t interval of the mean over seeds (none for one seed); steps to solve = "
             f"the first evaluation at ≥ {SOLVED:.0%}, median over the solved seeds; outcome in words per seed "
             "(stargraph_tables.outcome: solved / chance with shortcut / backward shortcut / no shortcut). Seeds set "
             "the initialisation and batch order; the data set is fixed per graph. Written by `foresight bench "
             f"report {folder}` from the cell JSONs of this folder.", ""]
    for key, gc in groups.items():
        lines += [f"## {group_title(key, gc)}", "", group_table(gc), ""]
    if plot_name:
        lines += [f"![exact match against steps]({plot_name})", "",
                  "Plot: test exact match against training step per objective, mean over seeds, band from the lowest "
                  "to the highest seed; a cell that early stopping ended holds its last value to the end of its "
                  "schedule.", ""]
    lines += ["## Machine and versions", "", *_provenance(cells), "", "## Commands", "",
              "Every cell, as its JSON records the command that reproduces it:", ""]
    for c in sorted(cells, key=lambda c: c["_file"]):
        lines.append(f"- `{c['_file']}`: `{c.get('command') or 'not recorded'}`")
    return "\n".join(lines) + "\n"


def plot_cells(cells: list[dict], path: Path) -> Path:
    from foresight.plot import plot_bands

    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(group_key(c), []).append(c)
    panels = []
    for key, gc in groups.items():
        series: dict[str, list] = {}
        for c in gc:
            series.setdefault(c["run"], []).append(held(c["curve"], c))
        name, _, d, length, n = key[:5]
        panels.append({"title": f"{name + ': ' if name else ''}G({d},{length}), N={n}", "ylabel": "test exact match",
                       "series": series, "hline": (1.0 / d, "1/d (an arm at random)"), "ylim": (-0.02, 1.02)})
    return plot_bands(panels, path)


def write_leaderboard(folder: Path) -> tuple[Path, Path]:
    """``folder/README.md`` and ``folder/exact_match.png`` from the cell JSONs there; returns both paths."""
    folder = Path(folder)
    cells = load_cells(folder)
    plot = plot_cells(cells, folder / PLOT)
    readme = folder / README
    write_text(readme, render(folder, cells))
    return readme, plot
