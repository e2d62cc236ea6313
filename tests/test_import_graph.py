"""Imports run one way: foresight's packages form layers, and a package imports only from layers below it.

Every ``import`` under ``src/foresight`` counts, at any depth (inside functions and ``if TYPE_CHECKING:`` blocks
too): a lazy import still ties the two packages together. Nodes are the first-level names ``foresight.X`` (a
subpackage or a top-level module); ``foresight`` itself is the public face (``foresight/__init__.py``), which names
the API lazily through ``importlib`` and imports nothing itself. ``LAYERS`` is the package map (docs/packages.md,
summed up in DEVELOPERS.md); this test keeps both true.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE_MAP = Path(__file__).resolve().parents[1] / "docs" / "packages.md"
ROOT = "foresight"

# Bottom first. A package may import from any layer below its own, never from its own layer or above.
LAYERS = [
    {"foresight", "errors", "batch", "modes"},  # the face (version, lazy names) and the shared leaves
    {"config", "io", "environment", "model", "ops"},  # recipes' coercion; atomic writes; the trunk; fused losses
    {"objectives", "paths", "plot"},  # losses, heads, weight schedules, parts; confined folders; figures
    {"generate", "train", "data"},  # decoding and drafting; the trainer and checkpoints; data sets and shards
    {"hf", "compare"},  # Hugging Face import and export; tables of finished runs
    {"wrapper", "eval"},  # foresight.wrap on transformers models; evaluation
    {"tasks"},  # recipes and task runs (star graph, text)
    {"cli"},  # the command line
    {"__main__"},  # ``python -m foresight``
]


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every module that ``source`` (the text of ``module``) imports, at any depth, with the line; for
    ``from A import b`` both ``A`` and ``A.b`` (``b`` may be a submodule)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def node_of(module: str, src: Path = SRC) -> str | None:
    """The first-level name of one of foresight's modules (``foresight.train.lm`` -> ``train``); ``foresight``
    for the package itself and for a name it defines (``foresight.__version__``); None for another project's."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    if len(parts) > 1 and ((src / ROOT / parts[1]).is_dir() or (src / ROOT / f"{parts[1]}.py").is_file()):
        return parts[1]
    return ROOT


def package_graph(src: Path = SRC) -> dict[str, dict[str, list[str]]]:
    """``{A: {B: ["file:line", ...]}}``: the files of first-level package A that import from B (A != B)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        module = module_name(path, src)
        here = node_of(module, src)
        graph.setdefault(here, {})
        for target, line in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            there = node_of(target, src)
            if there is None or there == here:
                continue  # another project's module, or one of the same package
            where = f"{path.relative_to(src)}:{line}"
            if where not in graph[here].setdefault(there, []):
                graph[here][there].append(where)
    return graph


def find_cycle(edges: dict[str, set[str]] | dict[str, dict]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` as a path ``[a, b, ..., a]``, or None if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_finds_a_cycle_and_names_it():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_reads_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / ROOT
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("from . import helper\n")
    (pkg / "low" / "helper.py").write_text("def f():\n    from foresight.high import x  # lazy, still an edge\n")
    (pkg / "high.py").write_text("from .low import helper\nx = 1\n")
    graph = package_graph(tmp_path)
    assert set(graph["low"]) == {"high"} and graph["low"]["high"] == ["foresight/low/helper.py:2"]
    assert find_cycle(graph) in (["high", "low", "high"], ["low", "high", "low"])


def test_packages_import_each_other_in_one_direction():
    graph = package_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "package cycle: " + " -> ".join(cycle) + "; " + "; ".join(
        f"{a} -> {b} at {', '.join(graph[a][b][:3])}" for a, b in zip(cycle, cycle[1:]))


def test_every_import_runs_down_the_package_map():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    graph = package_graph()
    unplaced = sorted(set(graph) - set(layer))
    assert not unplaced, f"place {unplaced} in LAYERS (and in DEVELOPERS.md's package map)"
    upward = [f"{a} -> {b} ({', '.join(files[:3])})" for a, targets in graph.items() for b, files in targets.items()
              if layer[b] >= layer[a]]
    assert not upward, "imports that do not run down the package map: " + "; ".join(upward)


def test_the_package_map_page_shows_these_layers():
    """docs/packages.md's table: one row per package (or a few leaves), its layer number first (1 = bottom)."""
    written: dict[int, set[str]] = {}
    for layer, cell in re.findall(r"^\| (\d+) \| ([^|]+) \|", PACKAGE_MAP.read_text(), re.M):
        names = {n.removesuffix("/").removesuffix(".py") for n in re.findall(r"`([^`]+)`", cell)}
        written.setdefault(int(layer), set()).update("foresight" if n == "__init__" else n for n in names)
    assert written == {i + 1: names for i, names in enumerate(LAYERS)}
