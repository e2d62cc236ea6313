"""Atomic, resumable checkpoints: ``<run>/checkpoints/step_00000123.pt``.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over its final
name, so a crash never leaves a half-written file under a checkpoint's name: every ``step_*.pt`` present is
complete, and the newest one is what ``--resume`` loads.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from foresight.errors import ForesightError

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / n) for n in os.listdir(folder) if (m := _NAME.match(n))]
    return sorted(found)


def save_checkpoint(folder: Path, step: int, state: dict, keep_last: int) -> Path:
    path = folder / f"step_{step:08d}.pt"
    atomic_save(state, path)
    for _, old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint file (or the newest in a run folder / checkpoints folder) with a clear error if bad."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = list_checkpoints(folder)
        if not found:
            raise ForesightError(f"no checkpoint (checkpoints/step_*.pt) in {path}")
        path = found[-1][1]
    if not path.is_file():
        raise ForesightError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, not where in the unpickler it failed
        raise ForesightError(f"{path} is not a readable foresight checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "lm" not in state or "config" not in state:
        raise ForesightError(f"{path} is not a foresight checkpoint (missing model state or config)")
    return state
