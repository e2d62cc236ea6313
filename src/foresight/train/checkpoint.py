"""Atomic, resumable checkpoints that never run code when read:
``<run>/checkpoints/step_00000123.safetensors`` (one process) or ``<run>/checkpoints/step_00000123/`` (a sharded
checkpoint of a data-parallel run).

Format (``foresight.train.state_file``): tensors (model, optimiser moments, RNG states) in safetensors, every
other value (config, progress, optimiser hyper-parameters, versions) as JSON in the file's header. No pickle is
written, so a checkpoint from someone else is data, not a program. Older ``step_*.pt`` checkpoints (pickles)
are still read, but only through PyTorch's restricted ``weights_only`` unpickler, which builds plain types and
tensors and refuses anything else (sound from torch 2.10 on: the floor in pyproject); a ``.pt`` file that asks
for more is refused with one line.

A checkpoint is written to a temporary file (folder) beside its final name, fsync'd, then renamed
(``foresight.io``), so every ``step_*`` present is complete; ``--resume`` loads the newest one that reads, and
names any newer one that does not.

A sharded checkpoint is a ``torch.distributed.checkpoint`` (DCP) folder: every rank writes its shards of
``{"model": ..., "optim": ...}`` and rank 0 adds ``trainer.safetensors`` (step, evaluations, config, data
position, every rank's RNG state). DCP's own ``.metadata`` index is a pickle, and its default load path
unpickles non-tensor entries with ``torch.load(weights_only=False)`` (torch 2.13); foresight reads sharded
checkpoints only through ``SafeReader`` (a restricted unpickler that admits DCP's metadata classes alone, and
shard files named inside the folder) and ``SafePlanner`` (``weights_only=True`` for non-tensor entries).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch

from foresight.errors import ForesightError
from foresight.io import RECORD, fsync_folder, read_record
from foresight.model.limits import state_mismatch
from foresight.paths import inside
from foresight.train.state_file import load_state, save_state

SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"  # pickled checkpoints of foresight before the safetensors format: read with weights_only
_NAME = re.compile(r"^step_(\d{8})(\.safetensors|\.pt)?$")
META = "trainer.safetensors"  # in a sharded checkpoint: everything but the model's and optimiser's tensors
LEGACY_META = "trainer.pt"


class UnreadableCheckpoint(ForesightError):
    """A checkpoint file that is truncated, damaged or not a checkpoint (``--resume`` then tries an older one)."""


def is_sharded(path: Path) -> bool:
    """A sharded (DCP) checkpoint folder."""
    path = Path(path)
    return ((path / META).is_file() or (path / LEGACY_META).is_file()) and (path / ".metadata").is_file()


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``folder``, files and sharded folders, oldest first (one per
    step: the safetensors file where an old ``.pt`` of the same step is also there)."""
    if not Path(folder).is_dir():
        return []
    found: dict[int, Path] = {}
    for n in sorted(os.listdir(folder), key=lambda n: n.endswith(SUFFIX)):  # .safetensors last: it wins
        if m := _NAME.match(n):
            path = Path(folder) / n
            if path.is_file() if m.group(2) else is_sharded(path):
                found[int(m.group(1))] = path
            elif not m.group(2) and path.is_dir():
                os.listdir(path)  # a step folder we may not read is a PermissionError (one line), not "none here"
    return sorted(found.items())


def _prune(folder: Path, keep_last: int) -> None:
    for _, old in list_checkpoints(folder)[:-keep_last]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def save_checkpoint(folder: Path, step: int, state: dict, keep_last: int) -> Path:
    path = Path(folder) / f"step_{step:08d}{SUFFIX}"
    save_state(state, path)
    (Path(folder) / f"step_{step:08d}{LEGACY_SUFFIX}").unlink(missing_ok=True)  # a resumed old run's same step
    _prune(folder, keep_last)
    return path


def save_sharded(folder: Path, step: int, lm, optimizer, meta: dict, keep_last: int) -> Path:
    """Collective: every rank calls it. Writes ``folder/step_XXXXXXXX/`` through a temporary folder that rank 0
    renames once every rank has written its shards; ``meta`` (rank 0's) becomes ``trainer.safetensors``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from foresight.io import folder_mode, note_written
    from foresight.train.distributed import barrier, is_main

    path, tmp = folder / f"step_{step:08d}", folder / f".step_{step:08d}.tmp"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
        tmp.mkdir(parents=True, mode=folder_mode())
    barrier()
    model_state, optim_state = get_state_dict(lm, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    if is_main():
        save_state(meta, tmp / META)
        _fix_modes(tmp)
    barrier()  # every shard is on disk
    if is_main():
        note_written(path, "tree")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_folder(folder)
        _prune(folder, keep_last)
    barrier()  # no rank goes on before the checkpoint exists under its name
    return path


def _fix_modes(folder: Path) -> None:
    """DCP writes its files with the process's default mode; make them what any file the user writes gets."""
    from foresight.io import file_mode

    for p in folder.iterdir():
        if p.is_file():
            with contextlib.suppress(OSError):
                os.chmod(p, file_mode())


# ------------------------------------------------------------------------------------ reading, safely


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` pickle, allowed to build DCP's metadata records and plain types only."""

    ALLOWED = {
        ("torch.distributed.checkpoint.metadata", n) for n in (
            "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
            "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
    } | {
        ("torch.serialization", "_get_layout"),  # looks a layout up by name
        ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.distributed.checkpoint.planner", "LoadItemType"),
        ("torch.distributed.checkpoint.planner", "WriteItemType"),
        ("torch", "Size"), ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
        ("torch._utils", "_rebuild_tensor_v2"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and hasattr(torch, name) and isinstance(getattr(torch, name),
                                                                     (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


def _safe_reader_class():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(dcp.FileSystemReader):
        """``FileSystemReader`` whose metadata is read by ``_MetadataUnpickler``, with every shard file a plain
        name inside the checkpoint folder."""

        def read_metadata(self, *args, **kwargs):
            path = inside(self.path, ".metadata")
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
            if not isinstance(metadata, dcp.Metadata):
                raise pickle.UnpicklingError(".metadata does not hold checkpoint metadata")
            for info in (metadata.storage_data or {}).values():
                name = str(getattr(info, "relative_path", ""))
                if not name or "/" in name or "\\" in name or name in (".", "..") or os.path.isabs(name):
                    raise pickle.UnpicklingError(f".metadata names a shard file outside its folder: {name!r}")
                inside(self.path, name, "shard")  # a shard file linked to one elsewhere is not read either
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def _safe_planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        """Non-tensor entries (optimiser hyper-parameters) through the restricted ``weights_only`` unpickler."""

        def load_bytes(self, read_item, value) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafePlanner()


def read_dcp_metadata(path: Path):
    """The DCP index of a sharded checkpoint, read safely; ``UnreadableCheckpoint`` if it is not one."""
    try:
        return _safe_reader_class()(str(path)).read_metadata()
    except UnreadableCheckpoint:
        raise
    except ForesightError:  # a file outside the folder: refused, not "broken" (resume must not fall back past it)
        raise
    except Exception as e:
        raise UnreadableCheckpoint(f"{path}/.metadata is not a safe, readable checkpoint index "
                                   f"({type(e).__name__}: {str(e)[:160]})") from None


def load_sharded(path: Path, lm, optimizer) -> dict:
    """Collective when data-parallel: load a sharded checkpoint into ``lm`` (sharded or not) and ``optimizer``;
    returns its ``trainer.safetensors``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = _load_meta(path)
    index = read_dcp_metadata(path)
    model_state, optim_state = get_state_dict(lm, optimizer)  # the layout to read into
    saved = {k[len("model."):]: tuple(v.size) for k, v in index.state_dict_metadata.items()
             if k.startswith("model.") and isinstance(v, dcp.TensorStorageMetadata)}
    if problem := state_mismatch({k: tuple(v.shape) for k, v in model_state.items()}, saved):
        raise ForesightError(f"{path} does not match this recipe's model: {problem}")
    with _single_process_is_fine():
        try:
            dcp.load({"model": model_state, "optim": optim_state}, storage_reader=_safe_reader_class()(str(path)),
                     planner=_safe_planner())
        except Exception as e:
            raise ForesightError(f"{path} does not match this recipe's model and optimiser "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    set_state_dict(lm, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    return meta


def _load_meta(path: Path) -> dict:
    path = Path(path)
    if (path / META).is_file():
        return _readable(load_state, inside(path, META))
    return _load_legacy(inside(path, LEGACY_META), "cpu")


def _readable(load, path: Path, *args):
    try:
        return load(path, *args)
    except UnreadableCheckpoint:
        raise
    except ForesightError as e:
        raise UnreadableCheckpoint(str(e)) from None


def _load_legacy(path: Path, map_location) -> dict:
    """An old pickled ``.pt`` checkpoint, through the restricted unpickler only (plain data and tensors)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        wants = re.search(r"GLOBAL (\S+)", str(e))
        detail = f"it asks for {wants.group(1)}" if wants else "it holds objects other than plain data and tensors"
        raise UnreadableCheckpoint(
            f"{path} is an old-format (pickle) checkpoint that could run code when read ({detail}); foresight "
            f"refuses it. Checkpoints that foresight wrote never need this: ask its author for a .safetensors "
            f"checkpoint") from None
    except Exception as e:  # a truncated or foreign file: say which, not where in the unpickler it failed
        raise UnreadableCheckpoint(f"{path} is not a readable foresight checkpoint ({type(e).__name__}); it may "
                                   f"be truncated or damaged") from None


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
    index = read_dcp_metadata(path)
    _check_sizes_on_disk(path, index)
    tensors = {}
    for key, item in index.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(item, dcp.TensorStorageMetadata):
            tensors[key[len("model."):]] = torch.empty(item.size, dtype=item.properties.dtype)
    with _single_process_is_fine():
        dcp.load({"model": tensors}, storage_reader=_safe_reader_class()(str(path)), planner=_safe_planner(),
                 no_dist=True)
    return {**meta, "lm": {k: v.to(map_location) for k, v in tensors.items()}}


def _check_permissions(path: Path) -> None:
    """Open every file of the checkpoint for reading first: a permission error (EACCES, EPERM) is the
    ``OSError`` it is (one line, exit 1), not a broken checkpoint. Taken for broken, the file would be passed
    over for an older checkpoint, and the resumed run would then overwrite the file it could not read."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    for f in files:
        os.close(os.open(f, os.O_RDONLY))


def _check_sizes_on_disk(path: Path, index) -> None:
    """The model tensors a sharded checkpoint's index describes must fit in the shard files beside it: the
    index is a small pickle, and reading allocates every tensor it names before any shard is read, so an index
    that asks for more bytes than the folder holds is refused first (``UnreadableCheckpoint``)."""
    import torch.distributed.checkpoint as dcp

    wanted = 0
    for key, item in index.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(item, dcp.TensorStorageMetadata):
            numel = 1
            for n in item.size:
                numel *= int(n)
            wanted += numel * torch.empty((), dtype=item.properties.dtype).element_size()
    names = {str(getattr(info, "relative_path", "")) for info in (index.storage_data or {}).values()}
    held = sum((Path(path) / n).stat().st_size for n in names if (Path(path) / n).is_file())
    if wanted > held:
        raise UnreadableCheckpoint(f"{path}/.metadata describes {wanted:,} bytes of model tensors but the shard "
                                   f"files hold {held:,}; the checkpoint is damaged or not what it claims")


def read_checkpoint_file(path: Path, map_location="cpu") -> dict:
    """One checkpoint (a file or a sharded folder), checked to hold a model and a config."""
    path = Path(path)
    _check_permissions(path)
    if is_sharded(path):
        try:
            state = _read_sharded_model(path, map_location)
        except ForesightError:
            raise
        except Exception as e:
            raise UnreadableCheckpoint(f"{path} is not a readable sharded checkpoint ({type(e).__name__}); it may "
                                       f"be truncated or damaged") from None
    elif not path.is_file():
        raise ForesightError(f"checkpoint not found: {path}")
    elif path.suffix == LEGACY_SUFFIX:
        state = _load_legacy(path, map_location)
    else:
        state = _readable(load_state, path, map_location)
    if (not isinstance(state, dict) or not isinstance(state.get("lm"), dict)
            or not isinstance(state.get("config"), dict)):
        raise UnreadableCheckpoint(f"{path} is not a foresight checkpoint (missing model state or config)")
    check_import_complete(state, path)  # an imported checkpoint is read only from a whole import folder
    return state


IMPORT_FORMAT = "foresight-import"  # the completion record of a folder written by ``foresight import``


def check_import_complete(state: dict, checkpoint: Path) -> None:
    """An imported checkpoint (its config names ``imported_from``) is read only from a whole import folder: one
    with its completion record (an import interrupted before ``foresight.io`` made imports transactions, or a
    copy of the file alone, is refused in one line)."""
    config = state.get("config")
    source = config.get("imported_from") if isinstance(config, dict) else None
    if not isinstance(source, dict) or source.get("format") != "huggingface":  # not written by foresight import
        return
    folder = Path(checkpoint).parent
    record = read_record(folder)
    if record is None or record["format"] != IMPORT_FORMAT:
        raise ForesightError(f"{checkpoint} is an imported checkpoint but {folder} has no completion record "
                             f"({RECORD}) of a foresight import, so it may be incomplete; import it again")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint (a file or sharded folder), or the newest one that reads in a run folder or checkpoints
    folder (saying on stderr which newer ones are broken), with a clear error if there is none."""
    path = Path(path)
    if path.is_dir() and not is_sharded(path):
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = confined(list_checkpoints(folder), path)
        if not found and (path / "config.json").is_file():  # a save_pretrained / export folder: say what reads it
            raise ForesightError(f"no checkpoint (checkpoints/step_*{SUFFIX} or step_*/) in {path}: it is a Hugging "
                                 f"Face model folder; foresight import {path} --out RUN makes a foresight checkpoint "
                                 f"of it (foresight eval {path} --tasks ... evaluates it as it is)")
        if not found:
            raise ForesightError(f"no checkpoint (checkpoints/step_*{SUFFIX} or step_*/) in {path}")
        return newest_readable([p for _, p in found], lambda p: read_checkpoint_file(p, map_location))[1]
    return read_checkpoint_file(path, map_location)


def confined(found: list[tuple[int, Path]], folder: Path) -> list[tuple[int, Path]]:
    """``found`` (from ``list_checkpoints``), each checked to resolve inside ``folder``, the folder the user named:
    a checkpoint linked to a file elsewhere is refused in one line, not read."""
    for _, p in found:
        inside(folder, os.path.relpath(p, folder), "checkpoint")
    return found


def newest_readable(paths: list[Path], read) -> tuple[Path, dict]:
    """``read`` the newest of ``paths`` (oldest first) that is readable; a broken one is named on stderr and the
    one before it tried. If none reads, the newest one's error."""
    import sys

    broken: list[tuple[Path, UnreadableCheckpoint]] = []
    for p in reversed(paths):
        try:
            state = read(p)
        except UnreadableCheckpoint as e:
            broken.append((p, e))
            continue
        from foresight.train.distributed import is_main

        for _, e in broken if is_main() else []:  # said when an older one stands in (else the error says it)
            print(f"foresight: warning: skipped a broken checkpoint, using {p.name} instead: {e}", file=sys.stderr)
        return p, state
    raise broken[0][1]


def shapes_of(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
