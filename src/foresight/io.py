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
from pathlib import Path
from typing import Callable

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


def atomic_write(path: Path, write: Callable[[Path], None] | bytes | str) -> Path:
    """Write ``path`` atomically. ``write`` is the content (bytes, or text as UTF-8) or a function that writes
    the file whose path it is given (for libraries that only write to a path, e.g. safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
