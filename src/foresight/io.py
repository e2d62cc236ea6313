"""Atomic, durable file writes: the one way foresight writes a file.

A file is written to a temporary name beside its final name (``.<name>.<random>.tmp``), flushed and fsync'd,
given the permissions any file the user writes would get (``0o666 & ~umask``: ``mkstemp`` alone gives 0600,
which keeps teammates from reading an exported model), then renamed over the final name, and the folder is
fsync'd so the rename itself survives a power cut. A crash or a full disk therefore never leaves a
half-written file under a real name; the temporary file is removed on failure, and ``clean_temporaries``
removes any that a ``kill -9`` left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.tmp$")  # what atomic_write (and a sharded checkpoint) name their temporaries


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """What ``open(path, "w")`` would give a new file."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    return 0o777 & ~_umask()


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# A run folder's manifest: every path foresight has written (or begun to write) in it, one JSON object a line
# (``{"path": "ntp/metrics.jsonl", "kind": "file"}``; kind "tree" for a folder written whole). ``--overwrite``
# removes exactly these (``foresight.train.run_folder.remove_run``). Appended before each write, by whichever
# process writes (star-graph workers too), so a kill never leaves a file of foresight's unlisted.
MANIFEST = ".foresight-written"
_MANIFEST_DEPTH = 4  # out/run/checkpoints/step_*.safetensors: the manifest is at most this many folders up


def _manifest_of(path: Path) -> tuple[Path, Path] | None:
    """(run folder, its manifest) governing ``path``: the nearest ancestor within ``_MANIFEST_DEPTH`` that holds a
    manifest (a real file, never a link), or None."""
    for folder in list(path.parents)[:_MANIFEST_DEPTH]:
        manifest = folder / MANIFEST
        if manifest.is_file() and not manifest.is_symlink():
            return folder, manifest
    return None


def note_written(path: Path, kind: str = "file") -> None:
    """Add ``path`` to the manifest of the run folder it lies in (``_manifest_of``); nothing when it lies in none,
    or inside a temporary folder (what is written there reaches its real name by a rename that is noted itself)."""
    path = Path(os.path.abspath(path))
    if any(_TMP_NAME.match(part) for part in path.parts[:-1]):
        return
    found = _manifest_of(path)
    if found is None:
        return
    folder, manifest = found
    line = json.dumps({"path": path.relative_to(folder).as_posix(), "kind": kind}) + "\n"
    fd = os.open(manifest, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode("utf-8"))  # one small O_APPEND write: whole even with several writers
    finally:
        os.close(fd)


def read_manifest(out: Path) -> dict[str, str] | None:
    """What foresight recorded writing in ``out`` (relative path -> "file" | "tree"), None without a manifest;
    a line cut short by a kill, or damaged, is skipped (it names nothing to remove)."""
    try:
        text = (out / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    entries: dict[str, str] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry.get("kind") in ("file", "tree"):
            entries[entry["path"]] = "tree" if entries.get(entry["path"]) == "tree" else entry["kind"]
    return entries


def is_recorded(path: Path) -> bool | None:
    """Whether the manifest of the run folder ``path`` lies in lists it (None: no manifest governs ``path``)."""
    path = Path(os.path.abspath(path))
    found = _manifest_of(path)
    if found is None:
        return None
    folder, _ = found
    return path.relative_to(folder).as_posix() in (read_manifest(folder) or {})


def atomic_write(path: Path, write: Callable[[Path], None] | bytes | str) -> Path:
    """Write ``path`` atomically. ``write`` is the content (bytes, or text as UTF-8) or a function that writes
    the file whose path it is given (for libraries that only write to a path, e.g. safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    note_written(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    tmp = Path(name)
    try:
        if callable(write):
            os.close(fd)
            fd = -1
            write(tmp)
            fd = os.open(tmp, os.O_RDWR)
        else:
            data = write.encode("utf-8") if isinstance(write, str) else write
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:  # name the file the user asked for, not our temporary
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    fsync_folder(path.parent)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, text)


def write_json(path: Path, data, indent: int | None = 2) -> Path:
    return atomic_write(path, json.dumps(data, indent=indent) + "\n")


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` made atomic; its I/O failures (reported as its own error type, with the OS
    error code in the text) become the ``OSError`` they are, so the command line can say them in one line."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as e:
            if m := re.search(r"(?:os error|code:) (\d+)", str(e)):
                raise OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(path)) from None
            raise

    return atomic_write(path, write)


def fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(Path(root))


def clean_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files and folders that an interrupted write left in ``folder`` (only names this
    module gives its temporaries); returns what was removed. Call it only where no other writer is running
    (a run folder under its lock)."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for n in names:
        if _TMP_NAME.match(n):
            p = Path(folder) / n
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ------------------------------------------------------------------------------- folders as transactions
#
# ``export``, ``import``, ``prepare`` and ``ForesightModel.save_pretrained`` build their whole output in a
# temporary sibling folder (``.<name>.<pid>-<random>.tmp``, so ``clean_temporaries`` recognises it), write a
# completion record last (``RECORD``: the format, its version and every file written), and only then put the
# folder in place, swapping it with the old one in one step where the system allows it. A ``kill -9`` at any
# moment therefore leaves the old complete folder or the new complete one under the real name, never a mix, and
# the old content is never removed before the new is complete.

RECORD = "foresight_complete.json"
RECORD_VERSION = 1
_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    import ctypes
    import ctypes.util
    import errno

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # this file system cannot
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(new: Path, target: Path) -> Path | None:
    """Put the folder ``new`` at ``target``; returns where the old content of ``target`` now is (for the caller
    to remove once nothing can go wrong any more), or None when there was none.

    Where the system cannot swap two folders in one step, the old folder is first renamed to
    ``.<name>.old-<random>`` (a name ``clean_temporaries`` never removes), so a kill between the two renames
    leaves both copies on disk, not neither."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return None
    if _exchange(new, target):
        return new
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.rmdir(aside)
    os.rename(target, aside)
    os.rename(new, target)
    return aside


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (someone else's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's live process
        return True
    return True


def clean_dead_temporaries(target: Path) -> list[Path]:
    """Remove the temporary folders of ``target`` (``.<name>.<pid>-*.tmp``) whose writing process has died
    (a ``kill -9``); a live writer's folder stays."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)-[^/]*\.tmp$")
    removed = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for n in names:
        m = pattern.match(n)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            p = target.parent / n
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def written_files(folder: Path) -> list[str]:
    """Every file under ``folder`` as a relative POSIX path, sorted (what a completion record lists)."""
    found = []
    for root, _, files in os.walk(folder):
        for f in files:
            found.append(Path(root, f).relative_to(folder).as_posix())
    return sorted(found)


def write_record(folder: Path, kind: str, files: list[str] | None = None) -> dict:
    """Write ``folder/RECORD`` (last: it says every other file is complete); ``files``: those written, by
    default every file in the folder."""
    from foresight import __version__

    files = written_files(folder) if files is None else sorted(files)
    record = {"format": kind, "version": RECORD_VERSION, "created_by": f"foresight {__version__}",
              "files": [f for f in files if f != RECORD]}
    write_json(Path(folder) / RECORD, record)
    return record


@contextmanager
def folder_transaction(target: Path, kind: str) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target`` to write into; when the block ends without an error, write
    the completion record (format ``kind``), make it durable and put it at ``target`` in place of whatever was
    there (the caller has checked that it may be replaced). On an error the temporary folder is removed and
    ``target`` is untouched."""
    target = Path(target)
    if target.is_symlink():  # --out names a link to a folder: replace the folder it names, not the link
        target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temporaries(target)
    note_written(target, "tree")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}-", suffix=TMP_SUFFIX))
    old = None
    try:
        os.chmod(tmp, folder_mode())  # mkdtemp gives 0700
        yield tmp
        write_record(tmp, kind)
        fsync_tree(tmp)
        old = swap_into_place(tmp, target)
        fsync_folder(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(out: Path, force: bool, kind: str, names: frozenset[str], what: str) -> None:
    """``out`` may be written by a ``folder_transaction`` of ``kind``: it does not exist, is empty, or (with
    ``force``) holds an earlier ``what`` (only the ``names`` it writes, its record of ``kind``) and nothing else:
    anything of the user's in it is never replaced. One line otherwise."""
    from foresight.errors import ForesightError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ForesightError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        held = "a model (config.json)" if (out / "config.json").exists() else "files"
        raise ForesightError(f"{out} already holds {held}; choose another --out, or pass --force to replace an "
                             f"earlier {what} as a whole")
    foreign = sorted(n for n in os.listdir(out) if n not in names)
    if foreign:
        raise ForesightError(f"{out} holds {foreign[0]!r}, which foresight {what} does not write; --force replaces "
                             f"only a folder holding an earlier {what} and nothing else: choose another --out")
    record = read_record(out)
    if record is not None and record["format"] != kind:
        raise ForesightError(f"{out} holds {record['format']!r}, not an {what}; choose another --out")


def read_record(folder: Path) -> dict | None:
    """The completion record of ``folder``, None when it has none; ``ForesightError`` (one line) when it is
    damaged or a file it lists is missing."""
    from foresight.errors import ForesightError

    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ForesightError(f"{path} is not valid JSON; write the folder again") from None
    if (not isinstance(record, dict) or not isinstance(record.get("format"), str)
            or not isinstance(record.get("files"), list) or not all(isinstance(f, str) for f in record["files"])):
        raise ForesightError(f"{path} is not a foresight completion record; write the folder again")
    if record.get("version") != RECORD_VERSION:
        raise ForesightError(f"{path}: completion record version {record.get('version')!r} is not "
                             f"{RECORD_VERSION}; use a foresight that wrote it, or write the folder again")
    for f in record["files"]:
        if not (Path(folder) / f).is_file():
            raise ForesightError(f"{folder} is incomplete: {f}, listed in {RECORD}, is missing; write it again")
    return record


def is_unfinished(folder: Path) -> bool:
    """A temporary folder of an interrupted write (its name is one ``folder_transaction`` gives)."""
    return bool(_TMP_NAME.match(Path(folder).name))
