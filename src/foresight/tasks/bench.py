"""``foresight bench stargraph GRID``: the objective benchmark on star graphs — graphs x objectives x seeds
(issue 24 items 2-3; TOP paper §5.3 for the task).

A grid file (``configs/bench/<name>.yaml`` or a path) lists

- ``graphs``: name -> ``{recipe: <star-graph recipe>, set: {key: value, ...}, objectives: [names], seeds: ...}``;
  ``set`` holds ``--set`` overrides of the base recipe (``stargraph.nodes: 50``, ``model.hidden_size: 96``);
  ``objectives`` (optional) the subset of the grid's objectives run on that graph; ``seeds`` (optional) replaces
  the grid's seeds there.
- ``objectives``: run name -> objective list, or ``{objectives: [...], model: {...}}``, exactly a recipe's ``runs:``.
- ``seeds``: ``{default: [s, ...], <objective>: [s, ...]}``: the ``train.seed`` values each objective runs with.

Every graph becomes one recipe (``load_recipe`` of the base with ``set`` and ``runs=<the grid's objectives>``,
the one parse), and its (objective, seed) cells run through ``run_stargraph``: side by side over the cores
(``tasks.pool``), stoppable (Ctrl-C / SIGTERM: running cells end with a final evaluation, their JSON marked
``-partial``), resumable (a cell whose JSON exists is skipped; a partial cell continues from its checkpoint).
Each cell writes ``<results>/<graph>/<recipe>-g<d>x<l>-<run>-<steps>steps[-full]-seed<s>.json``
(``tasks.stargraph.cell_name``), the name ``foresight stargraph run <recipe> --results`` gives the same cell, so
cells run before by that command are reused when copied into the graph's folder. A cell file already there must
hold the same settings (``same_settings``), or the bench stops with one line rather than mix two settings.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from foresight.config import find_recipe, load_yaml
from foresight.data.stargraph import StarGraphSpec
from foresight.errors import ForesightError
from foresight.tasks.recipe import Recipe, complete_model, load_recipe
from foresight.tasks.stargraph import cell_name
from foresight.train.flops import flops_per_token
from foresight.train.lm import TrainableLM

GRID_KEYS = {"graphs", "objectives", "seeds", "description"}
GRAPH_KEYS = {"recipe", "set", "objectives", "seeds"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # graph and objective names: also folder / file names
MAX_SEEDS = 1000
# Seconds per training FLOP on the project's 2-core VM, one cell per core: cpu_solve's NTP cells (the demo's
# setting, 1.22e13 training FLOPs) took 380-392 s (results/stargraph-cpu/solve-d48/). MTP and DS-MTP took about
# twice their FLOP share there (1,030-1,100 s for 1.6e13): `--dry-run` uses the finished cells of the results
# folder instead when there are any, per objective where it can (``calibrate``).
DEFAULT_S_PER_FLOP = 390 / 1.217e13
# Settings that do not change what a cell computes (stargraph.RESUME_EXEMPT): left out of the identity check.
EXEMPT = {"stargraph": ("jobs", "eval_batch_size")}


@dataclass
class Graph:
    name: str
    recipe: str  # the base star-graph recipe: a name in configs/stargraph/ or a .yaml path
    overrides: list[str]  # --set strings, in the grid's order
    objectives: list[str]  # run names, in the grid's order
    seeds: dict[str, list[int]]  # objective -> its seeds


@dataclass
class Grid:
    name: str
    path: Path
    graphs: list[Graph]
    objectives: dict  # run name -> the run as written (a recipe's runs: entry)


@dataclass
class PlannedCell:
    graph: str
    objective: str
    seed: int
    file: Path  # its results JSON
    status: str = "to run"  # "done" (JSON there, same settings), "partial" (a -partial JSON: continues), "to run",
    # or "reuse" (the same cell, same settings, in a --reuse folder: ``source``, copied in by ``reuse_cells``)
    flops: float = 0.0  # training FLOPs of the full schedule
    params: int = 0
    steps: int = 0
    estimate_s: float | None = None
    source: Path | None = None  # a "reuse" cell's JSON in the --reuse folder


@dataclass
class GraphPlan:
    graph: Graph
    recipe: Recipe
    spec: StarGraphSpec
    folder: Path  # results folder of the graph
    cells: list[PlannedCell] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ grid file


def _fail(path: Path, message: str) -> ForesightError:
    return ForesightError(f"{path}: {message}")


def _seed_list(value, path: Path, where: str) -> list[int]:
    if (not isinstance(value, list) or not value or len(value) > MAX_SEEDS
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in value)):
        raise _fail(path, f"{where} must be a non-empty list of integer seeds in 0 .. 2^31-1, e.g. [20, 21, 22]")
    if len(set(value)) != len(value):
        raise _fail(path, f"{where} lists a seed twice: {value}")
    return list(value)


def _seed_table(value, path: Path, where: str, objectives: list[str]) -> dict[str, list[int]]:
    """``{default: [...], <objective>: [...]}`` -> objective -> seeds, for each of ``objectives``."""
    if not isinstance(value, dict) or not value:
        raise _fail(path, f"{where} must map 'default' and objective names to seed lists, e.g. {{default: [20, 21]}}")
    unknown = sorted(set(value) - {"default"} - set(objectives))
    if unknown:
        raise _fail(path, f"{where}.{unknown[0]}: no such objective in the grid ({', '.join(objectives)})")
    table = {k: _seed_list(v, path, f"{where}.{k}") for k, v in value.items()}
    missing = [o for o in objectives if o not in table and "default" not in table]
    if missing:
        raise _fail(path, f"{where} gives no seeds for {missing[0]!r}; add a 'default' list")
    return {o: table.get(o, table.get("default")) for o in objectives}


def _override(key: str, value) -> str:
    """A ``set:`` entry as a ``--set`` string (JSON is YAML, so the value comes back as it was written)."""
    return f"{key}={json.dumps(value)}"


def load_grid(name: str) -> Grid:
    """Parse a grid file (module docstring); every problem is one line naming the file and the key."""
    path = find_recipe(name, "bench")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise _fail(path, "a grid file is a mapping with graphs, objectives and seeds")
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r}; a grid has: {', '.join(sorted(GRID_KEYS))}")
    objectives = data.get("objectives")
    if not isinstance(objectives, dict) or not objectives:
        raise _fail(path, "'objectives' must map run names to objective lists, e.g. ntp: [{name: ntp}]")
    for o in objectives:
        if not isinstance(o, str) or not NAME.match(o):
            raise _fail(path, f"objective name {o!r} must be letters, digits, '_', '-' or '.' (it names files)")
    names = list(objectives)
    grid_seeds = _seed_table(data.get("seeds"), path, "seeds", names)
    graphs_raw = data.get("graphs")
    if not isinstance(graphs_raw, dict) or not graphs_raw:
        raise _fail(path, "'graphs' must map graph names to {recipe: ..., set: {...}}")
    graphs = []
    for gname, entry in graphs_raw.items():
        where = f"graphs.{gname}"
        if not isinstance(gname, str) or not NAME.match(gname):
            raise _fail(path, f"graph name {gname!r} must be letters, digits, '_', '-' or '.' (it names a folder)")
        if not isinstance(entry, dict):
            raise _fail(path, f"{where} must be a mapping: {{recipe: demo, set: {{stargraph.nodes: 50}}}}")
        bad = sorted(set(entry) - GRAPH_KEYS)
        if bad:
            raise _fail(path, f"{where}: unknown key {bad[0]!r}; a graph has: {', '.join(sorted(GRAPH_KEYS))}")
        recipe = entry.get("recipe")
        if not isinstance(recipe, str) or not recipe:
            raise _fail(path, f"{where}.recipe must name a star-graph recipe (e.g. demo) or a .yaml path")
        sets = entry.get("set") or {}
        if not isinstance(sets, dict) or not all(isinstance(k, str) and k for k in sets):
            raise _fail(path, f"{where}.set must map recipe keys to values, e.g. {{stargraph.nodes: 50}}")
        if any(k == "runs" or k.startswith("runs.") for k in sets):
            raise _fail(path, f"{where}.set may not change runs; list objectives under 'objectives'")
        chosen = entry.get("objectives", names)
        if not isinstance(chosen, list) or not chosen or not all(isinstance(o, str) for o in chosen):
            raise _fail(path, f"{where}.objectives must be a non-empty list of objective names")
        for o in chosen:
            if o not in objectives:
                raise _fail(path, f"{where}.objectives: no objective {o!r} in the grid ({', '.join(names)})")
        seeds = grid_seeds if "seeds" not in entry else _seed_table(entry["seeds"], path, f"{where}.seeds", names)
        graphs.append(Graph(gname, recipe, [_override(k, v) for k, v in sets.items()], list(dict.fromkeys(chosen)),
                            {o: seeds[o] for o in chosen}))
    return Grid(path.stem, path, graphs, objectives)


def select(grid: Grid, only: list[str] | None, seeds: list[int] | None) -> Grid:
    """``--only GRAPH[/OBJECTIVE]`` (``*`` for any part; repeatable: the union) and ``--seeds``: the grid cut down
    to those cells. A pattern that matches nothing is refused (a typo would otherwise run nothing silently)."""
    keep: dict[str, set[str]] = {}
    for pattern in only or ["*"]:
        gpat, _, opat = pattern.partition("/")
        opat = opat or "*"
        hits = [(g.name, o) for g in grid.graphs for o in g.objectives
                if gpat in ("*", g.name) and opat in ("*", o)]
        if not hits:
            graphs = ", ".join(f"{g.name}/{{{','.join(g.objectives)}}}" for g in grid.graphs)
            raise ForesightError(f"--only {pattern}: no such cell in {grid.path}; it has {graphs}")
        for g, o in hits:
            keep.setdefault(g, set()).add(o)
    out = []
    for g in grid.graphs:
        if g.name not in keep:
            continue
        objs = [o for o in g.objectives if o in keep[g.name]]
        table = {o: [s for s in g.seeds[o] if seeds is None or s in seeds] for o in objs}
        objs = [o for o in objs if table[o]]
        if objs:
            out.append(replace(g, objectives=objs, seeds={o: table[o] for o in objs}))
    if not out:
        raise ForesightError(f"--seeds {','.join(map(str, seeds or []))}: none of the selected cells of {grid.path} "
                             "has these seeds")
    return replace(grid, graphs=out)


# ------------------------------------------------------------------------------------------------ planning


def graph_recipe(grid: Grid, graph: Graph, extra: list[str] = ()) -> Recipe:
    """The graph's recipe: its base, its ``set``, the grid's objectives as ``runs`` (all of them, so the stored
    recipe does not depend on ``--only``) and ``extra`` (e.g. ``stargraph.jobs``)."""
    find_recipe(graph.recipe, "stargraph")  # an unknown base: the one-line error names the known recipes
    try:
        recipe = load_recipe(graph.recipe, graph.overrides + [_override("runs", grid.objectives)] + list(extra),
                             "stargraph")
    except ForesightError as e:
        raise ForesightError(f"{grid.path}: graphs.{graph.name}: {e}") from None
    if recipe.task != "stargraph":
        raise ForesightError(f"{grid.path}: graphs.{graph.name}: {recipe.path} is a {recipe.task!r} recipe, not a "
                             "star-graph one")
    return recipe


def normalized(config: dict, run: str) -> dict:
    """A cell's settings for the identity check: its recipe (``config`` of the cell JSON) with only its own run
    kept under ``runs`` and without the settings that do not change the result (``EXEMPT``), JSON-typed."""
    c = json.loads(json.dumps(config))
    c["runs"] = {run: (c.get("runs") or {}).get(run)}
    for section, keys in EXEMPT.items():
        for k in keys:
            (c.get(section) or {}).pop(k, None)
    return c


def first_difference(a, b, where: str = "") -> str | None:
    """The first key path where two JSON values differ, as ``key: old != new``; None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    if a == b:
        return None
    return f"{where or 'value'}: {json.dumps(a)} there, {json.dumps(b)} in the grid"


def same_settings(path: Path, expected: dict, run: str) -> str | None:
    """None when the cell JSON at ``path`` was run with ``expected`` (a recipe's raw form with the cell's seed);
    otherwise the first difference, in words."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"not a readable JSON file ({e})"
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        return "not a star-graph cell JSON (no 'config')"
    return first_difference(normalized(stored["config"], run), normalized(expected, run))


def cell_raw(recipe: Recipe, seed: int) -> dict:
    """The recipe a cell of this seed stores (``run_stargraph`` writes the same)."""
    raw = copy.deepcopy(recipe.raw)
    raw["train"] = {**(raw.get("train") or {}), "seed": seed}
    return raw


def plan(grid: Grid, results: Path, extra: list[str] = (), reuse: list[Path] = ()) -> list[GraphPlan]:
    """Every selected cell with its results file, status, size and training FLOPs; refuses (one line) a cell file
    that exists with other settings. ``reuse``: folders of cells run before (``foresight stargraph run --results``);
    a cell missing here whose JSON is there under the same name with the same settings is marked "reuse"."""
    for folder in reuse:
        if not Path(folder).is_dir():
            raise ForesightError(f"--reuse {folder}: no such folder")
    plans = []
    for graph in grid.graphs:
        recipe = graph_recipe(grid, graph, extra)
        cfg = recipe.task_config
        spec = StarGraphSpec(cfg.deg, cfg.path, cfg.nodes).validate()
        gp = GraphPlan(graph, recipe, spec, results / graph.name)
        for obj in graph.objectives:
            model_cfg = complete_model(recipe.run_models[obj], vocab_size=spec.vocab_size,
                                       max_seq_len=spec.seq_len + 1)
            with torch.device("meta"):  # sizes only: nothing is allocated
                lm = TrainableLM(model_cfg, recipe.runs[obj])
            per_token = flops_per_token(lm, spec.seq_len)
            params = lm.model.num_parameters()
            for seed in graph.seeds[obj]:
                train = replace(recipe.train, seed=seed)
                file = gp.folder / cell_name(recipe.path.stem, spec, obj, train)
                status = "to run"
                if file.is_file():
                    diff = same_settings(file, cell_raw(recipe, seed), obj)
                    if diff is not None:
                        raise ForesightError(f"{file} holds this cell with other settings ({diff}); move it away, or "
                                             f"give the graph another name in {grid.path}")
                    status = "done"
                elif file.with_name(file.stem + "-partial.json").is_file():
                    status = "partial"
                source = next((Path(d) / file.name for d in reuse if (Path(d) / file.name).is_file()
                               and same_settings(Path(d) / file.name, cell_raw(recipe, seed), obj) is None), None)
                if status != "done" and source is not None:
                    status = "reuse"
                gp.cells.append(PlannedCell(graph.name, obj, seed, file, status,
                                            per_token * train.batch_size * spec.seq_len * train.steps,
                                            params, train.steps,
                                            source=source if status == "reuse" else None))
        plans.append(gp)
    return plans


def reuse_cells(plans: list[GraphPlan]) -> list[PlannedCell]:
    """Copy the "reuse" cells into the results folder (atomic writes); they are "done" from then on."""
    from foresight.io import write_text

    copied = []
    for gp in plans:
        for c in gp.cells:
            if c.status == "reuse":
                write_text(c.file, c.source.read_text())
                c.status = "done"
                copied.append(c)
    return copied


def calibrate(plans: list[GraphPlan]) -> dict[str, float]:
    """Seconds per training FLOP from the finished cells on disk: objective -> the median over its cells, and
    ``""`` -> the median over all (``DEFAULT_S_PER_FLOP`` when none has finished)."""
    rates: dict[str, list[float]] = {}
    for gp in plans:
        for c in gp.cells:
            if c.status not in ("done", "reuse"):
                continue
            try:
                stored = json.loads((c.source or c.file).read_text())
                rate = float(stored["wall_clock_s"]) / (c.flops * stored["steps"] / max(c.steps, 1))
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
                continue
            rates.setdefault(c.objective, []).append(rate)
            rates.setdefault("", []).append(rate)
    out = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    out.setdefault("", DEFAULT_S_PER_FLOP)
    return out


def estimate(plans: list[GraphPlan]) -> dict[str, float]:
    """Fill every cell's ``estimate_s`` (full schedule at ``calibrate``'s rate); returns the rates."""
    rates = calibrate(plans)
    for gp in plans:
        for c in gp.cells:
            c.estimate_s = rates.get(c.objective, rates[""]) * c.flops
    return rates


def plan_table(plans: list[GraphPlan], jobs: int, rates: dict[str, float] | None = None) -> str:
    """``--dry-run``: one line per cell, then the CPU time still to run and the wall-clock at ``jobs`` cells at
    once (an estimate: early stopping, evaluation and the machine's load are not counted)."""
    lines = ["| graph | objective | seed | params | steps | estimated CPU-min | status | results file |",
             "|---|---|---|---|---|---|---|---|"]
    todo = 0.0
    for gp in plans:
        for c in gp.cells:
            lines.append(f"| {c.graph} | {c.objective} | {c.seed} | {c.params / 1e6:.2f}M | {c.steps} | "
                         f"{(c.estimate_s or 0) / 60:.1f} | {c.status} | {c.file} |")
            if c.status not in ("done", "reuse"):
                todo += c.estimate_s or 0
    n = sum(len(gp.cells) for gp in plans)
    left = sum(c.status not in ("done", "reuse") for gp in plans for c in gp.cells)
    lines += ["", f"{n} cells, {left} to run: about {todo / 60:.0f} CPU-minutes, about {todo / 60 / max(jobs, 1):.0f} "
              f"minutes of wall-clock at {jobs} cell(s) at once (estimate; early stopping not counted)"]
    measured = sorted(k for k in (rates or {}) if k)
    lines.append("rate: seconds per training FLOP of the finished cells here (" + ", ".join(measured) + ")" if measured
                 else "rate: the demo's NTP cells (0.09M parameters); it overestimates larger models, whose larger "
                      "matrices run more FLOPs a second (G(2,5)/50 at width 96: 0.41 CPU-s a step measured, 0.76 "
                      "estimated)")
    return "\n".join(lines)


def run_grid(grid: Grid, plans: list[GraphPlan], out: Path, *, time_limit_s: float | None = None,
             cell_command=None) -> bool:
    """Run every cell not done yet, graph after graph (each graph's cells side by side through ``run_stargraph``).
    ``out``: run folders, ``out/<graph>/<objective>-seed<s>``; ``cell_command(graph, objective, seed)``: the
    command stored in each cell JSON. Returns True when every cell has its JSON, False when stopped or out of time
    (the cells finished so far are on disk; running the same command again continues)."""
    import time

    from foresight.tasks.stargraph import run_stargraph
    from foresight.train.run_folder import claim, has_checkpoints, holds_run

    start = time.monotonic()
    for gp in plans:
        todo = [c for c in gp.cells if c.status != "done"]
        if not todo:
            continue
        left = None if time_limit_s is None else time_limit_s - (time.monotonic() - start)
        if left is not None and left <= 0:
            return False
        folder = out / gp.graph.name
        # A folder with checkpoints continues (a partial cell resumes from its newest one); a folder holding only
        # the remains of cells stopped before their first checkpoint is replaced.
        resume = has_checkpoints(folder)
        with claim(folder, resume=resume, overwrite=not resume and holds_run(folder)):
            objectives = [o for o in gp.graph.objectives if any(c.objective == o for c in todo)]
            seeds = sorted({c.seed for c in todo})
            run_stargraph(gp.recipe, {o: gp.recipe.runs[o] for o in objectives}, folder, resume=resume, seeds=seeds,
                          results_dir=gp.folder, skip_existing=True, time_limit_s=left,
                          only={(c.seed, c.objective) for c in todo},
                          cell_command=(None if cell_command is None else
                                        (lambda run, seed, g=gp.graph.name: cell_command(g, run, seed))))
        if not all(c.file.is_file() for c in todo):
            return False  # stopped (a signal) or out of time: start no further graph
    return True
