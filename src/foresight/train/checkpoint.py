"""Atomic, resumable checkpoints: ``<run>/checkpoints/step_00000123.pt`` (one process) or
``<run>/checkpoints/step_00000123/`` (a sharded checkpoint of a data-parallel run).

A checkpoint is written to a temporary file (folder) beside its final name, flushed to disk, then renamed, so a
crash never leaves a half-written checkpoint under a checkpoint's name: every ``step_*`` present is complete,
and the newest one is what ``--resume`` loads.

A sharded checkpoint is a ``torch.distributed.checkpoint`` (DCP) folder: every rank writes its shards of
``{"model": ..., "optim": ...}`` (fully qualified names, as ``get_state_dict`` gives them), and rank 0 adds
``trainer.pt`` with everything else (step, evaluations, config, data position, every rank's RNG state). DCP
reshards on load, so such a checkpoint resumes on any number of processes, one included; ``load_checkpoint``
reads its model into plain tensors, so export, evaluation and generation take it like a ``.pt`` file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from foresight.errors import ForesightError

_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")
META = "trainer.pt"  # in a sharded checkpoint: everything but the model's and optimiser's tensors


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


def is_sharded(path: Path) -> bool:
    """A sharded (DCP) checkpoint folder."""
    return (Path(path) / META).is_file() and (Path(path) / ".metadata").is_file()


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``folder``, ``.pt`` files and sharded folders, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for n in os.listdir(folder):
        if m := _NAME.match(n):
            path = folder / n
            if path.is_file() if m.group(2) else is_sharded(path):
                found.append((int(m.group(1)), path))
    return sorted(found)


def _prune(folder: Path, keep_last: int) -> None:
    for _, old in list_checkpoints(folder)[:-keep_last]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def save_checkpoint(folder: Path, step: int, state: dict, keep_last: int) -> Path:
    path = folder / f"step_{step:08d}.pt"
    atomic_save(state, path)
    _prune(folder, keep_last)
    return path


def save_sharded(folder: Path, step: int, lm, optimizer, meta: dict, keep_last: int) -> Path:
    """Collective: every rank calls it. Writes ``folder/step_XXXXXXXX/`` through a temporary folder that rank 0
    renames once every rank has written its shards; ``meta`` (rank 0's) becomes ``trainer.pt``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from foresight.train.distributed import barrier, is_main

    path, tmp = folder / f"step_{step:08d}", folder / f".step_{step:08d}.tmp"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
        tmp.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(lm, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    if is_main():
        atomic_save(meta, tmp / META)
    barrier()  # every shard is on disk
    if is_main():
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _prune(folder, keep_last)
    barrier()  # no rank goes on before the checkpoint exists under its name
    return path


def load_sharded(path: Path, lm, optimizer) -> dict:
    """Collective when data-parallel: load a sharded checkpoint into ``lm`` (sharded or not) and ``optimizer``;
    returns its ``trainer.pt``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = _load_meta(path)
    model_state, optim_state = get_state_dict(lm, optimizer)  # the layout to read into
    with _single_process_is_fine():
        try:
            dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=path)
        except Exception as e:
            raise ForesightError(f"{path} does not match this recipe's model and optimiser "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    set_state_dict(lm, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    return meta


def _load_meta(path: Path) -> dict:
    try:
        return torch.load(path / META, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ForesightError(f"{path / META} is not a readable foresight checkpoint ({type(e).__name__})") from None


@contextlib.contextmanager
def _single_process_is_fine():
    """DCP warns when it reads without a process group; reading in one process is what we mean then."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _read_sharded_model(path: Path, map_location) -> dict:
    """The model of a sharded checkpoint as a plain state dict (every tensor whole), read by this process
    alone; the optimiser state is not read."""
    import torch.distributed.checkpoint as dcp

    meta = _load_meta(path)
    tensors = {}
    for key, item in dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata.items():
        if key.startswith("model.") and isinstance(item, dcp.TensorStorageMetadata):
            tensors[key[len("model."):]] = torch.empty(item.size, dtype=item.properties.dtype)
    with _single_process_is_fine():
        dcp.load({"model": tensors}, checkpoint_id=path, no_dist=True)
    return {**meta, "lm": {k: v.to(map_location) for k, v in tensors.items()}}


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint file (or the newest in a run folder / checkpoints folder) with a clear error if bad."""
    path = Path(path)
    if is_sharded(path):
        try:
            return _read_sharded_model(path, map_location)
        except ForesightError:
            raise
        except Exception as e:
            raise ForesightError(f"{path} is not a readable sharded checkpoint ({type(e).__name__})") from None
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = list_checkpoints(folder)
        if not found:
            raise ForesightError(f"no checkpoint (checkpoints/step_*.pt or step_*/) in {path}")
        path = found[-1][1]
        if is_sharded(path):
            return load_checkpoint(path, map_location)
    if not path.is_file():
        raise ForesightError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, not where in the unpickler it failed
        raise ForesightError(f"{path} is not a readable foresight checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "lm" not in state or "config" not in state:
        raise ForesightError(f"{path} is not a foresight checkpoint (missing model state or config)")
    return state
