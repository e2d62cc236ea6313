"""A run folder belongs to one run: claiming it, locking it, and replacing only what foresight wrote.

``claim(out, resume=..., overwrite=...)`` is what every training command does before it writes anything:

- a lock file ``.foresight.lock`` (JSON: pid, host, start time) is created exclusively, so a second run started
  into the same folder fails at once; a lock whose process is gone (same host, pid not alive) is stale and
  taken over with a note on stderr; a lock from another host is never guessed about.
- a fresh run refuses a folder that already holds a run (``recipe.json``, or a run sub-folder with metrics or
  checkpoints) unless ``--resume`` (continue it) or ``--overwrite`` (replace it) is given; ``--resume`` on a
  folder with nothing to continue is an error, not a silent fresh start.
- ``--overwrite`` removes only the files and folders foresight writes (``FILES``, ``RUN_FILES``), never
  anything else the user keeps there.
- temporary files that an interrupted write left behind are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from foresight.errors import ForesightError
from foresight.io import clean_temporaries

LOCK = ".foresight.lock"
FILES = ("recipe.json", "results.md", "results.json", "accuracy.png", "compare.md", "compare.png")  # in the folder
RUN_FILES = ("checkpoints", "metrics.jsonl", "result.json", "tokenizer", "tensorboard", "eval")  # in each run's
_held: set[str] = set()  # locks this process holds (a lock with our own pid that is not here is stale)


def run_dirs(out: Path) -> list[Path]:
    """Sub-folders of ``out`` that hold a foresight run (metrics or checkpoints)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and ((p / "metrics.jsonl").is_file()
                                                              or (p / "checkpoints").is_dir()))


def holds_run(out: Path) -> bool:
    return (out / "recipe.json").is_file() or bool(run_dirs(out))


def has_checkpoints(out: Path) -> bool:
    from foresight.train.checkpoint import list_checkpoints

    return any(list_checkpoints(d / "checkpoints") for d in run_dirs(out))


def remove_run(out: Path) -> None:
    """Delete what foresight wrote in ``out`` (``FILES``; ``RUN_FILES`` of every run sub-folder, which is then
    removed if empty); anything else stays."""
    for d in run_dirs(out):
        for name in RUN_FILES:
            _remove(d / name)
        clean_temporaries(d)
        owner = _lock_owner(d / LOCK)
        if owner is not None and _is_stale(owner):  # left by a killed trainer (the folder's lock is ours)
            (d / LOCK).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            d.rmdir()  # only if nothing of the user's is left in it
    for name in FILES:
        _remove(out / name)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _lock_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged


def _is_stale(owner: dict) -> bool:
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or not 0 < pid < 2**31:
        # another machine's process, or an unreadable lock (a pid no process can have: os.kill would raise
        # OverflowError or signal a whole group, issue 21): never guessed dead
        return False
    if owner["pid"] == os.getpid():
        return str(owner.get("token")) not in _held
    return not _alive(owner["pid"])


def acquire(folder: Path) -> Path:
    """Create ``folder/.foresight.lock`` or fail with one line naming its owner."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    token = f"{os.getpid()}-{time.time_ns()}"
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    # The record is written to a private file first and hard-linked into place: link() fails if the lock
    # exists, and a lock that exists is always complete, so a rival never reads a half-written owner.
    draft = folder / f".foresight.lock.{token}.tmp"
    draft.write_text(record, encoding="utf-8")
    try:
        return _link_lock(folder, path, draft, token)
    finally:
        draft.unlink(missing_ok=True)


def _link_lock(folder: Path, path: Path, draft: Path, token: str) -> Path:
    for attempt in range(2):
        try:
            _place(draft, path)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is None:
                continue  # released just now
            if attempt == 0 and _is_stale(owner):
                print(f"foresight: note: removing the stale lock of process {owner.get('pid')} (no longer "
                      f"running) in {folder}", file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}" if owner else "another process"
            raise ForesightError(f"{folder} is in use by {who} (lock file {path}); wait for it to finish, or "
                                 f"choose another --out (if that process is gone, delete the lock file)") from None
        _held.add(token)
        return path
    raise ForesightError(f"could not lock {folder}: {path} keeps changing; is another run starting there?")


def _place(draft: Path, path: Path) -> None:
    """Put ``draft``'s content at ``path`` only if ``path`` does not exist (FileExistsError otherwise)."""
    try:
        os.link(draft, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then write (a short window)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(draft.read_text(encoding="utf-8"))


def release(path: Path) -> None:
    owner = _lock_owner(path)
    if owner and str(owner.get("token")) in _held:
        _held.discard(str(owner["token"]))
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def claim(out: Path, resume: bool = False, overwrite: bool = False, main: bool = True) -> Iterator[Path]:
    """Lock ``out`` for one run (see the module docstring); ``main`` False (ranks > 0 of a torchrun job) only
    checks, as rank 0 holds the lock and does the cleaning."""
    out = Path(out)
    if resume and overwrite:
        raise ForesightError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    if out.exists() and not out.is_dir():
        raise ForesightError(f"--out {out} is a file, not a folder; choose a folder name")
    if resume and not has_checkpoints(out):
        raise ForesightError(f"--resume: {out} holds no checkpoint to continue from (is the folder name right?); "
                             f"drop --resume to start a new run there")
    if not main:
        yield out
        return
    created = not out.exists()
    lock = acquire(out)
    try:
        if not resume and holds_run(out):
            if not overwrite:
                raise ForesightError(f"{out} already holds a run; continue it with --resume, replace it with "
                                     f"--overwrite, or choose another --out")
            remove_run(out)
        clean_temporaries(out)
        for d in run_dirs(out):
            clean_temporaries(d)
            clean_temporaries(d / "checkpoints")
        yield out
    finally:
        release(lock)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # nothing was written (e.g. nothing to run): leave no empty folder behind
