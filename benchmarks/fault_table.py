"""The table helpers that ``fault_cases.py`` and ``fault_cases_paths.py`` share: the line a user sees, and the
temporaries a case left behind. A module of its own so that the two scripts import it, not each other."""

from __future__ import annotations

from pathlib import Path


def seen(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip() and "\r" not in line and "it/s" not in line
             and "step/s" not in line]
    return lines[-1] if lines else "(nothing on stderr)"


def leftovers(root: Path) -> str:
    tmp = [p for p in root.rglob("*") if ".tmp" in p.name]
    return "none" if not tmp else ", ".join(str(p.relative_to(root)) for p in tmp[:3])
