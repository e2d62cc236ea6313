"""A text corpus present on every machine with Python: the standard library's own source files.

``foresight tokenizer train --demo`` and ``foresight prepare --demo`` read it, so the text workflow runs
offline from a fresh clone. The files are the ``.py`` modules under ``sysconfig.get_paths()["stdlib"]``
(code, docstrings and comments: about 13 MB on CPython 3.11), without test suites, bundled third-party
packages and generated files, taken in sorted order up to ``max_bytes``. The same Python version gives the
same corpus; other versions give a slightly different one (the metadata records which).
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

from foresight.errors import ForesightError

DEFAULT_MAX_BYTES = 16_000_000
# Folders left out: test suites (they hold deliberately broken and non-UTF-8 files), third-party packages and
# caches; ``_sysconfigdata*.py`` and ``config-*`` are generated per machine, so they are left out too.
_EXCLUDED = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "idle_test"}


def stdlib_root() -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ForesightError(f"the demo corpus needs the Python standard library sources, not found at {root}")
    return root


def demo_files(max_bytes: int = DEFAULT_MAX_BYTES) -> list[Path]:
    """Sorted ``.py`` files of the standard library, up to ``max_bytes`` in total."""
    root = stdlib_root()
    files = []
    total = 0
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if _EXCLUDED & set(rel.parts[:-1]) or rel.parts[0].startswith(("config-", "_sysconfigdata")) \
                or rel.name.startswith("_sysconfigdata") or not path.is_file():
            continue
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    if not files:
        raise ForesightError(f"the demo corpus is empty: no .py files under {root}")
    return files


def describe(path: Path) -> str:
    """How a demo file is named in metadata: relative to the standard library, so it is machine-independent."""
    return "stdlib/" + path.relative_to(stdlib_root()).as_posix()


def demo_info() -> dict:
    return {"corpus": "python-stdlib", "python": platform.python_version(), "root": str(stdlib_root())}
