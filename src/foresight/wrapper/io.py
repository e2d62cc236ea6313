"""Saving and loading a wrapped model: the model in its own format, the heads beside it.

``save_pretrained(wrapped, DIR)`` calls the model's own ``save_pretrained`` (so ``AutoModelForCausalLM``
still loads ``DIR`` as before, heads ignored) and writes every objective's parameters to
``DIR/foresight_heads.safetensors`` under ``<objective key>.<parameter name>`` (``top.head.weight``,
``mtp.heads.0.self_attn.q_proj.weight``, ``dsmtp.layers.0.eh_proj.weight``, ...), with the objective specs in
its metadata (the format of ``foresight.hf.heads``: ``{"format": "foresight-heads", "objectives": ...}``).
Parameters shared with the model (NTP's output head) are not stored twice. The folder ends with the completion
record ``foresight_complete.json`` and is written as a transaction where it can be (``save_pretrained``), so a
crash never leaves a folder that ``from_pretrained`` takes for whole. Loading reads safetensors only: no pickle,
no code from the folder (``trust_remote_code=False`` always: a folder with ``auto_map`` is refused in one line),
and no file outside it (every file and every index shard must resolve inside the folder).

A wrapped PEFT model (``wrap(get_peft_model(model, cfg), ...)``) saves as PEFT saves it, the adapter
(``adapter_config.json``, ``adapter_model.safetensors``), with the heads file beside it; ``from_pretrained`` then
loads the base model (``base_model=``, or the path the adapter config names), the adapter onto it, and the heads.
Every load is strict: a weight the folder lacks or one the model has no place for is an error naming it, never a
freshly initialised tensor.
"""

from __future__ import annotations

import json
import math
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
from foresight.paths import NO_REMOTE_CODE, confine_folder, index_shards, note_ignored_code, refuse_remote_code
from foresight.wrapper.checks import has_adapter_layers, is_peft_model


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
    if not is_peft_model(wrapped.model) and has_adapter_layers(wrapped.model):
        # get_peft_model(wrapped, cfg) put adapters inside: the model's own save would write adapter-injected keys
        raise ForesightError("save_pretrained: the wrapped model holds PEFT adapter layers; save the PeftModel "
                             "(peft_model.save_pretrained(DIR)) or merge first (peft_model.merge_and_unload())")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ForesightError(f"{directory} is a file, not a folder; give save_pretrained a folder")
    if _holds_only_a_save(directory):
        with folder_transaction(directory, WRAPPER_FORMAT) as tmp:
            _write(wrapped, tmp, directory, **kwargs)
    else:
        _save_into(wrapped, directory, **kwargs)


def _write(wrapped, folder: Path, target: Path, **kwargs) -> None:
    """Every file of a save into ``folder`` (a temporary one): the model, the heads and a model card, unless
    ``target`` (where the save goes) holds a README.md someone else wrote, which is never replaced."""
    from foresight.wrapper.report import user_readme, write_model_card

    wrapped.model.save_pretrained(folder, **kwargs)
    write_safetensors(folder / HEADS_FILE, _head_tensors(wrapped), heads_metadata(wrapped.specs))
    if not user_readme(target):
        write_model_card(wrapped, folder)  # README.md: base model, objectives, head sizes


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
        _write(wrapped, tmp, directory, **kwargs)
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


def from_pretrained(cls, directory, *, return_logits: bool = True, base_model=None, is_trainable: bool = False,
                    **model_kwargs):
    """A ``cls`` (``ForesightModel``, passed in by its ``from_pretrained``: this module sits below it) from a
    folder written by ``save_pretrained``: the model through
    ``AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)``, the heads from the heads file.

    For a PEFT adapter folder: ``base_model`` (a model, or a path loaded as above; default: the
    ``base_model_name_or_path`` of ``adapter_config.json``) with the adapter loaded onto it
    (``is_trainable`` as in ``PeftModel.from_pretrained``), then the heads. Missing or unexpected weights (in the
    model, the adapter or the heads) raise ``ForesightError`` naming them."""
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    if model_kwargs.get("trust_remote_code"):
        raise ForesightError("ForesightModel.from_pretrained never runs code from a folder (trust_remote_code); "
                             "load the model yourself and wrap it: foresight.wrap(model, objectives)")
    heads_path = directory / HEADS_FILE
    if not heads_path.is_file() and (directory / "adapter_config.json").is_file():
        raise ForesightError(f"{directory}: a PEFT adapter without {HEADS_FILE}; if it was saved from "
                             f"get_peft_model(wrapped, cfg), load it with PeftModel.from_pretrained("
                             f"foresight.wrap(model, objectives), DIR)")
    if not heads_path.is_file():
        raise ForesightError(f"{directory}: no {HEADS_FILE}; is this a folder written by "
                             f"ForesightModel.save_pretrained? (a plain model folder loads with wrap(model, ...))")
    confine_folder(directory)  # every file and index shard transformers or we may read stays inside
    try:
        with safe_open(str(heads_path), framework="pt") as f:
            specs = specs_from_metadata(f.metadata(), str(heads_path))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ForesightError(f"{heads_path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if specs is None:
        raise ForesightError(f"{heads_path}: metadata lacks the foresight objective specs")
    check_complete(directory)  # the model files too: a save interrupted part-way is refused
    if (directory / "adapter_config.json").is_file():
        model = _load_adapter(directory, base_model, is_trainable, model_kwargs)
    else:
        model = load_model_strict(directory, **model_kwargs)
    wrapped = cls(model, specs, return_logits=return_logits)
    _copy_heads(wrapped, tensors, heads_path)
    return wrapped


def _mismatch(where, missing, unexpected, mismatched=()) -> None:
    """One line naming the weights that do not fit (the first few of each kind), or nothing."""
    parts = [f"{what} {', '.join(sorted(names)[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})"
             for what, names in (("missing", list(missing)), ("unexpected", list(unexpected)),
                                 ("wrong shape", list(mismatched))) if names]
    if parts:
        raise ForesightError(f"{where}: the weights do not fit the model, so it would load partly random: "
                             f"{'; '.join(parts)}")


def load_model_strict(directory, **model_kwargs):
    """``AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)``, refusing a folder whose weights do not
    fit the model (transformers would initialise the missing ones at random and only log it)."""
    from transformers import AutoModelForCausalLM

    local = isinstance(directory, (str, os.PathLike)) and Path(directory).is_dir()  # (else a hub name)
    if local:
        _check_config_fits(Path(directory))  # before transformers allocates what config.json asks for
    try:
        model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True,
                                                           **{**model_kwargs, **NO_REMOTE_CODE})
    except (ForesightError, MemoryError):
        raise
    except Exception as e:
        if local:
            # transformers' refusal of auto_map code, said as what to do instead
            refuse_remote_code(directory, "load the model yourself and wrap it: foresight.wrap(model, objectives)")
        # a malformed config.json or weights: transformers' reason, in one line (issue 21)
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ForesightError(f"{directory}: transformers cannot load the model ({type(e).__name__}: "
                             f"{detail})") from None
    if local:
        note_ignored_code(directory)  # loaded with transformers' own class
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    _mismatch(directory, info.get("missing_keys", []), info.get("unexpected_keys", []), mismatched)
    return model


def _load_adapter(directory: Path, base_model, is_trainable: bool, model_kwargs: dict):
    """A ``PeftModel``: the base model with the folder's adapter, every adapter tensor accounted for."""
    import json

    try:
        from peft import PeftModel, get_peft_model_state_dict
    except ImportError:
        raise ForesightError(f"{directory}: holds a PEFT adapter; install peft (pip install peft)") from None
    if base_model is None:
        base_model = json.loads((directory / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base_model:
            raise ForesightError(f"{directory}: adapter_config.json names no base model; pass "
                                 f"base_model=PATH_OR_MODEL")
    if isinstance(base_model, (str, os.PathLike)):
        base_model = load_model_strict(base_model, **model_kwargs)
    model = PeftModel.from_pretrained(base_model, directory, is_trainable=is_trainable)
    stored = _safetensors_keys(directory / "adapter_model.safetensors")
    expected = set(get_peft_model_state_dict(model))
    _mismatch(directory / "adapter_model.safetensors", expected - stored, stored - expected)
    return model


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    if not path.is_file():
        raise ForesightError(f"{path.parent}: {path.name} is missing")
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def _config_sizes(directory: Path) -> tuple[int, int, int] | None:
    """(vocabulary, width, layers) that ``config.json`` asks for (top level or ``text_config``), or None when it
    does not say in the usual names (then transformers' own checks are all there is)."""
    import json

    try:
        hf = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # (transformers reports a missing or broken config.json itself)
    if isinstance(hf, dict) and isinstance(hf.get("text_config"), dict):
        hf = {**hf, **hf["text_config"]}
    if not isinstance(hf, dict):
        return None
    sizes = []
    for names in (("vocab_size",), ("hidden_size", "n_embd", "d_model"), ("num_hidden_layers", "n_layer")):
        value = next((hf[n] for n in names if n in hf), None)
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        sizes.append(value)
    return tuple(sizes)


def _check_config_fits(directory: Path) -> None:
    """Before transformers builds the model from ``config.json``: the weight files must hold at least the
    parameters the config implies (the V x D input embedding and ~D²/2 per layer: a lower bound for any
    decoder), read from the safetensors headers alone. transformers allocates what the config asks for and
    fills what the files lack with fresh weights, so a small folder whose config asks for a vocabulary of 2e6 x
    width 4096 would otherwise allocate 32 GB before saying anything."""
    from foresight.hf.weights import read_hf_shapes
    from foresight.model.limits import MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, check_int

    sizes = _config_sizes(directory)
    if sizes is None:
        return
    vocab, width, layers = sizes
    for value, name, high in ((vocab, "vocab_size", MAX_VOCAB), (width, "hidden_size", MAX_WIDTH),
                              (layers, "num_hidden_layers", MAX_LAYERS)):
        check_int(value, f"{directory / 'config.json'}: {name}", 1, high)
    try:
        shapes = read_hf_shapes(directory)
    except ForesightError:
        return  # no weights in foresight's names (transformers says what it misses)
    held = sum(math.prod(s) for s in shapes.values())
    needed = vocab * width + layers * width * width // 2
    if needed > held:
        raise ForesightError(f"{directory / 'config.json'} asks for a model of at least {needed:,} parameters "
                             f"(vocab_size {vocab:,} x hidden_size {width:,}, {layers} layers) but the weight "
                             f"files hold {held:,}; the config does not belong to these weights")


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
    what ``ForesightTrainer`` does on ``resume_from_checkpoint``. A wrapped ``PeftModel`` reads the folder's
    adapter; a ``PeftModel`` around the wrapper (wrap first) reads its adapter, heads included."""
    from safetensors import safe_open

    directory = Path(directory)
    confine_folder(directory)  # every file and index shard transformers or we may read stays inside
    check_complete(directory)
    if is_peft_model(wrapped):  # get_peft_model(wrapped, cfg): the heads are in the adapter (modules_to_save)
        _load_adapter_into(wrapped, directory)
        return
    if is_peft_model(wrapped.model):
        _load_adapter_into(wrapped.model, directory)
    else:
        _load_model_into(wrapped.model, directory)
    heads_path = directory / HEADS_FILE
    with safe_open(str(heads_path), framework="pt") as f:
        _copy_heads(wrapped, {k: f.get_tensor(k) for k in f.keys()}, heads_path)


def _load_adapter_into(peft_model, directory: Path) -> None:
    """The folder's adapter weights into ``peft_model``'s active adapter, every tensor accounted for."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = directory / "adapter_model.safetensors"
    stored = _safetensors_keys(path)
    expected = set(get_peft_model_state_dict(peft_model))
    _mismatch(path, expected - stored, stored - expected)
    set_peft_model_state_dict(peft_model, load_file(str(path)))


def _load_model_into(model, directory: Path) -> None:
    """A model folder's weights (one file or shards) into ``model``, strictly."""
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files = index_shards(index, directory) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (directory / name).is_file():
            raise ForesightError(f"{directory}: {name} is missing; is this a ForesightModel.save_pretrained folder?")
        state.update(load_file(str(directory / name)))
    result = model.load_state_dict(state, strict=False)
    # save_pretrained drops tied copies (lm_head = embed_tokens): a missing key is fine if it shares its tensor
    # with a loaded one
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    really_missing = [k for k in result.missing_keys if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if really_missing or result.unexpected_keys:
        what = f"missing {really_missing[0]}" if really_missing else f"unexpected {result.unexpected_keys[0]}"
        raise ForesightError(f"{directory}: the model's weights do not fit ({what})")
