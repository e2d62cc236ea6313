"""Saving and loading a wrapped model: the model in its own format, the heads beside it.

``save_pretrained(wrapped, DIR)`` calls the model's own ``save_pretrained`` (so ``AutoModelForCausalLM``
still loads ``DIR`` as before, heads ignored) and writes every objective's parameters to
``DIR/foresight_heads.safetensors`` under ``<objective key>.<parameter name>`` (``top.head.weight``,
``mtp.heads.0.self_attn.q_proj.weight``, ``dsmtp.layers.0.eh_proj.weight``, ...), with the objective specs in
its metadata (the format of ``foresight.hf.heads``: ``{"format": "foresight-heads", "objectives": ...}``).
Parameters shared with the model (NTP's output head) are not stored twice. The file is written to a
temporary name and renamed, so a crash never leaves half a file. Loading reads safetensors only: no pickle,
no code from the folder (``trust_remote_code`` stays off unless the caller passes it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from foresight.errors import ForesightError
from foresight.hf.heads import HEADS_FILE, heads_metadata, specs_from_metadata


def _head_tensors(wrapped) -> dict[str, torch.Tensor]:
    model_params = {id(p) for p in wrapped.model.parameters()}
    out = {}
    for key, obj in wrapped.objectives.items():
        for name, p in obj.named_parameters():
            if id(p) not in model_params:
                out[f"{key}.{name}"] = p.detach().contiguous().cpu()
    return out


def save_pretrained(wrapped, directory, **kwargs) -> None:
    """``wrapped.model.save_pretrained(directory, **kwargs)`` plus ``foresight_heads.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapped.model.save_pretrained(directory, **kwargs)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{HEADS_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(_head_tensors(wrapped), tmp, metadata=heads_metadata(wrapped.specs))
        os.replace(tmp, directory / HEADS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)
    except (ForesightError, MemoryError):
        raise
    except Exception as e:  # a malformed config.json or weights: transformers' reason, in one line (issue 21)
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ForesightError(f"{directory}: transformers cannot load the model ({type(e).__name__}: "
                             f"{detail})") from None
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
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        from foresight.hf.weights import index_shards

        files = index_shards(index)
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
