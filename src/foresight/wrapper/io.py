"""Saving and loading a wrapped model: the model in its own format, the heads beside it.

``save_pretrained(wrapped, DIR)`` calls the model's own ``save_pretrained`` (so ``AutoModelForCausalLM``
still loads ``DIR`` as before, heads ignored) and writes every objective's parameters to
``DIR/foresight_heads.safetensors`` under ``<objective key>.<parameter name>`` (``top.head.weight``,
``mtp.heads.0.self_attn.q_proj.weight``, ``dsmtp.layers.0.eh_proj.weight``, ...), with the objective specs in
its metadata (the format of ``foresight.hf.heads``: ``{"format": "foresight-heads", "objectives": ...}``).
Parameters shared with the model (NTP's output head) are not stored twice. The folder ends with the completion
record ``foresight_complete.json`` and is written as a transaction where it can be (``save_pretrained``), so a
crash never leaves a folder that ``from_pretrained`` takes for whole. Loading reads safetensors only: no pickle,
no code from the folder (``trust_remote_code`` stays off unless the caller passes it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from foresight.errors import ForesightError
from foresight.hf.heads import HEADS_FILE, WRAPPER_FORMAT, check_complete, heads_metadata, specs_from_metadata
from foresight.io import (
    RECORD,
    folder_transaction,
    fsync_folder,
    fsync_tree,
    write_record,
    write_safetensors,
    written_files,
)


def _head_tensors(wrapped) -> dict[str, torch.Tensor]:
    model_params = {id(p) for p in wrapped.model.parameters()}
    out = {}
    for key, obj in wrapped.objectives.items():
        for name, p in obj.named_parameters():
            if id(p) not in model_params:
                out[f"{key}.{name}"] = p.detach().contiguous().cpu()
    return out


def save_pretrained(wrapped, directory, **kwargs) -> None:
    """``wrapped.model.save_pretrained(directory, **kwargs)`` plus ``foresight_heads.safetensors``, then the
    completion record (``foresight.io.RECORD``) that ``from_pretrained`` requires.

    A new or empty folder, or one holding an earlier save and nothing else, is written as a transaction
    (``foresight.io.folder_transaction``): beside it, then swapped into place whole. A folder with other content
    (a ``Trainer``'s output folder with its ``checkpoint-*`` folders) cannot be swapped without taking that
    content along, so the save goes in file by file (``_save_into``)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ForesightError(f"{directory} is a file, not a folder; give save_pretrained a folder")
    if _holds_only_a_save(directory):
        with folder_transaction(directory, WRAPPER_FORMAT) as tmp:
            _write(wrapped, tmp, **kwargs)
    else:
        _save_into(wrapped, directory, **kwargs)


def _write(wrapped, folder: Path, **kwargs) -> None:
    wrapped.model.save_pretrained(folder, **kwargs)
    write_safetensors(folder / HEADS_FILE, _head_tensors(wrapped), heads_metadata(wrapped.specs))


def _previous_files(directory: Path) -> list[str]:
    """What the last save into ``directory`` recorded writing ([] when there is no readable record)."""
    try:
        record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
        files = record["files"] if record.get("format") == WRAPPER_FORMAT else []
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def _holds_only_a_save(directory: Path) -> bool:
    """``directory`` is absent, empty, or holds an earlier save (its recorded files and record) and nothing else."""
    if not directory.is_dir():
        return True
    present = set(written_files(directory))
    return not present or (RECORD in present and present - {RECORD} <= set(_previous_files(directory)))


def _save_into(wrapped, directory: Path, **kwargs) -> None:
    """Save into a folder that holds other things too: the record goes first (until the new one is written last,
    ``from_pretrained`` refuses the folder, so a kill in between never passes for a whole save), the new files
    are written to a temporary folder inside it and moved in, and the files the previous save recorded that this
    one does not write are removed (those alone: nothing else in the folder is touched)."""
    previous = _previous_files(directory)
    (directory / RECORD).unlink(missing_ok=True)
    fsync_folder(directory)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".foresight-save.", suffix=".tmp"))
    try:
        _write(wrapped, tmp, **kwargs)
        fsync_tree(tmp)
        files = written_files(tmp)
        for f in files:
            (directory / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / f, directory / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in set(previous) - set(files):
        stale = directory / f
        if ".." not in Path(f).parts and not Path(f).is_absolute() and (stale.is_file() or stale.is_symlink()):
            stale.unlink()  # a link itself, never what it points at
    fsync_folder(directory)
    write_record(directory, WRAPPER_FORMAT, files)


def from_pretrained(directory, *, return_logits: bool = True, **model_kwargs):
    """A ``ForesightModel`` from a folder written by ``save_pretrained``: the model through
    ``AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)``, the heads from the heads file."""
    from safetensors import SafetensorError, safe_open
    from transformers import AutoModelForCausalLM

    from foresight.wrapper.model import ForesightModel

    directory = Path(directory)
    heads_path = directory / HEADS_FILE
    if not heads_path.is_file():
        raise ForesightError(f"{directory}: no {HEADS_FILE}; is this a folder written by "
                             f"ForesightModel.save_pretrained? (a plain model folder loads with wrap(model, ...))")
    try:
        with safe_open(str(heads_path), framework="pt") as f:
            specs = specs_from_metadata(f.metadata(), str(heads_path))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ForesightError(f"{heads_path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if specs is None:
        raise ForesightError(f"{heads_path}: metadata lacks the foresight objective specs")
    check_complete(directory)  # the model files too: a save interrupted part-way is refused
    model = AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)
    wrapped = ForesightModel(model, specs, return_logits=return_logits)
    _copy_heads(wrapped, tensors, heads_path)
    return wrapped


def _copy_heads(wrapped, tensors: dict[str, torch.Tensor], heads_path: Path) -> None:
    """Copy stored head tensors into ``wrapped``'s objectives, or a one-line error if they do not fit."""
    expected = _head_tensors(wrapped)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ForesightError(f"{heads_path}: heads do not fit the stored objectives ({what})")
    with torch.no_grad():
        params = {f"{key}.{name}": p for key, obj in wrapped.objectives.items() for name, p in obj.named_parameters()}
        for name, t in tensors.items():
            if params[name].shape != t.shape:
                raise ForesightError(f"{heads_path}: {name} has shape {tuple(t.shape)}, the model needs "
                                     f"{tuple(params[name].shape)}")
            params[name].copy_(t)


def load_into(wrapped, directory) -> None:
    """Load a ``save_pretrained`` folder's weights into an existing wrapped model (same objectives), in place:
    what ``ForesightTrainer`` does on ``resume_from_checkpoint``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    directory = Path(directory)
    check_complete(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        import json

        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (directory / name).is_file():
            raise ForesightError(f"{directory}: {name} is missing; is this a ForesightModel.save_pretrained folder?")
        state.update(load_file(str(directory / name)))
    result = wrapped.model.load_state_dict(state, strict=False)
    # save_pretrained drops tied copies (lm_head = embed_tokens): a missing key is fine if it shares its tensor
    # with a loaded one
    params = dict(wrapped.model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    really_missing = [k for k in result.missing_keys if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if really_missing or result.unexpected_keys:
        what = f"missing {really_missing[0]}" if really_missing else f"unexpected {result.unexpected_keys[0]}"
        raise ForesightError(f"{directory}: the model's weights do not fit ({what})")
    heads_path = directory / HEADS_FILE
    with safe_open(str(heads_path), framework="pt") as f:
        _copy_heads(wrapped, {k: f.get_tensor(k) for k in f.keys()}, heads_path)
