"""Only library code in the library (issue 25): every module of ``src/foresight`` is reached, through imports
(those inside functions included), from an entry point: the public API (``import foresight``), the ``foresight``
command (``foresight.cli.main``) or a console script of ``pyproject.toml``. A helper only a benchmark uses lives
in ``benchmarks/`` (as ``distill``, ``cached_heads``, ``next_line`` and ``smollm2`` do)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module under src/ (a package by its own name)."""
    out = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its body (and the packages above them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            # the public API's face: name -> module, imported on first use (importlib)
            found |= {v.value for v in getattr(node.value, "values", []) if isinstance(v, ast.Constant)}
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}  # "from pkg import module" names a module
    ours = set()
    for dotted in found:
        parts = dotted.split(".")
        ours |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules}
    return ours


def _entry_points() -> list[str]:
    """The public API, ``python -m foresight``, and the modules of ``[project.scripts]`` (read with a pattern:
    tomllib is Python 3.11+, and the project supports 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = re.findall(r'^\S+\s*=\s*"([\w.]+):\w+"', section, flags=re.M)
    assert scripts, "no [project.scripts] found in pyproject.toml"
    return ["foresight", "foresight.__main__", "foresight.cli.main", *scripts]


def test_every_library_module_is_reached_from_an_entry_point():
    modules = _modules()
    seen, todo = set(), _entry_points()
    while todo:
        name = todo.pop()
        if name not in seen and name in modules:
            seen.add(name)
            todo += _imported(name, modules[name], modules)
    orphans = sorted(set(modules) - seen)
    assert not orphans, (f"modules no entry point reaches: {orphans}; make each a documented capability (a command "
                         "or the public API) or move it to benchmarks/")
