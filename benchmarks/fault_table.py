"""The table helpers that ``fault_cases.py`` and ``fault_cases_paths.py`` share: the line a user sees, the
temporaries a case left behind, and the table itself. A module of its own so that the two scripts import it, not
each other."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable

COLUMNS = ["| case | exit | what the user sees (last stderr line) | temporaries left |", "|---|---|---|---|"]


def seen(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip() and "\r" not in line and "it/s" not in line
             and "step/s" not in line]
    return lines[-1] if lines else "(nothing on stderr)"


def leftovers(root: Path) -> str:
    tmp = [p for p in root.rglob("*") if ".tmp" in p.name]
    return "none" if not tmp else ", ".join(str(p.relative_to(root)) for p in tmp[:3])


def run_table(head: list[str], cases: Callable[[Path], Iterable[tuple]], out: Path | None) -> None:
    """Print ``head`` and a row per case that ``cases(work)`` yields (case, exit, line, leftovers), each as it comes,
    with the temporary ``work`` folder shown as ``<tmp>``; also write the whole table to ``out`` when given."""
    print("\n".join(head), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for case, code, line, left in cases(Path(work)):
            line = line.replace(work, "<tmp>").replace("|", "\\|")
            rows.append(f"| {case} | {code} | {line} | {left} |")
            print(rows[-1], flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(head + rows) + "\n")
