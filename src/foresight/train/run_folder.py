"""A run folder belongs to one run: claiming it, locking it, and replacing only what foresight wrote.

``claim(out, resume=..., overwrite=...)`` is what every training command does before it writes anything:

- a lock file ``.foresight.lock`` (JSON: pid, host, start time) is created exclusively, so a second run started
  into the same folder fails at once; a lock whose process is gone (same host, pid not alive) is stale and
  taken over with a note on stderr; a lock from another host is never guessed about.
- a fresh run refuses a folder that already holds a run (``recipe.json``, or a run sub-folder with metrics or
  checkpoints) unless ``--resume`` (continue it) or ``--overwrite`` (replace it) is given; ``--resume`` on a
  folder with nothing to continue is an error, not a silent fresh start.
- a fresh run creates the manifest ``.foresight-written`` (``foresight.io.MANIFEST``), to which every path
  foresight writes in the folder is added before it is written; ``--overwrite`` removes exactly those paths,
  never through a symbolic link and never anything by its name alone, so nothing else the user keeps there
  goes (a run folder from before the manifest is refused in one line).
- temporary files that an interrupted write of a recorded file left behind are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Iterator

from foresight.errors import ForesightError
from foresight.io import MANIFEST, pid_alive, read_manifest

LOCK = ".foresight.lock"
PID_MAX = 2**31 - 1  # the largest pid_t
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


def _inside(out: Path, rel: str) -> Path | None:
    """``out/rel`` when every folder on the way is a real folder inside ``out`` (no link, no ``..``), else None."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "." in parts:
        return None
    p = out
    for part in parts[:-1]:
        p = p / part
        if p.is_symlink() or not p.is_dir():
            return None
    return p / parts[-1]


def remove_run(out: Path) -> None:
    """Delete exactly what foresight recorded writing in ``out`` (its manifest, ``foresight.io.MANIFEST``), and
    the folders that held it once they are empty; never through a symbolic link, never anything by its name
    alone, so the user's own files (even ones called ``metrics.jsonl``) stay."""
    entries = read_manifest(out)
    if entries is None:
        raise ForesightError(f"{out} holds a run but no record of the files foresight wrote there ({MANIFEST}: a "
                             f"run from an older foresight); --overwrite removes only recorded files, so delete "
                             f"what you no longer need yourself, or choose another --out")
    folders: set[Path] = set()
    for rel, kind in entries.items():
        p = _inside(out, rel)
        if p is None or p.is_symlink():  # foresight never writes links: one there now is not what it wrote
            continue
        if p.is_dir() and kind == "tree":
            shutil.rmtree(p)  # does not follow the links inside
        elif p.is_file():
            p.unlink()
        _remove_temporaries(p)
        folders.update(q for q in p.parents if q != out and out in q.parents)
    for d in sorted(folders, key=lambda q: len(q.parts), reverse=True):  # deepest first
        owner = _lock_owner(d / LOCK)
        if owner is not None and _is_stale(owner):  # left by a killed trainer (the folder's lock is ours)
            (d / LOCK).unlink(missing_ok=True)
        if not d.is_symlink():
            with contextlib.suppress(OSError):
                d.rmdir()  # only if nothing of the user's is left in it
    (out / MANIFEST).unlink()


def _remove_temporaries(p: Path) -> None:
    """The temporaries of the recorded ``p`` that a kill left beside it (``.<name>.*.tmp``, ``.<name>.tmp``)."""
    pattern = re.compile(rf"^\.{re.escape(p.name)}(\..*)?\.tmp$")
    try:
        names = os.listdir(p.parent)
    except OSError:
        return
    for n in names:
        t = p.parent / n
        if pattern.match(n) and not t.is_symlink():
            if t.is_dir():
                shutil.rmtree(t, ignore_errors=True)
            else:
                t.unlink(missing_ok=True)


def clean_recorded_temporaries(out: Path) -> None:
    """What an interrupted write of a recorded file left (a run folder without a manifest: nothing)."""
    for rel in read_manifest(out) or {}:
        p = _inside(out, rel)
        if p is not None:
            _remove_temporaries(p)




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
    # (a pid is a positive 32-bit pid_t: os.kill cannot take a larger one, and 0 / -1 name process groups)
    if (owner.get("host") != socket.gethostname() or isinstance(pid, bool) or not isinstance(pid, int)
            or not 1 <= pid <= PID_MAX):
        return False  # another machine's process (or an unreadable lock): never guessed dead
    if owner["pid"] == os.getpid():
        return str(owner.get("token")) not in _held
    return not pid_alive(owner["pid"])


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
            who = (f"process {str(owner.get('pid', '?'))[:20]} on {str(owner.get('host', '?'))[:100]}" if owner
                   else "another process")
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
        if not resume and not (out / MANIFEST).is_file():
            (out / MANIFEST).touch()  # a fresh run records every file it writes (not a resumed older run)
        clean_recorded_temporaries(out)
        yield out
    finally:
        release(lock)
        if created:
            with contextlib.suppress(OSError):
                if (out / MANIFEST).stat().st_size == 0:
                    (out / MANIFEST).unlink()
                out.rmdir()  # nothing was written (e.g. nothing to run): leave no empty folder behind
