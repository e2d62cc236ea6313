"""Reading and writing Hugging Face weight files, and the trunk's name mapping.

The trunk's parameter names already are Hugging Face Llama/Qwen2 names below ``model.``
(``embed_tokens``, ``layers.{i}.self_attn.q_proj``, ..., ``norm``), except the output head, which HF keeps at
the top level as ``lm_head``. So the mapping is a prefix, no renaming and no RoPE permutation (our RoPE uses
the rotate-half layout HF uses).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from foresight.errors import ForesightError
from foresight.paths import index_shards, inside

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def trunk_key_to_hf(key: str) -> str:
    """``layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj.weight``; ``lm_head.weight`` stays."""
    return key if key.startswith("lm_head.") else f"model.{key}"


def hf_key_to_trunk(key: str) -> str | None:
    """The inverse of ``trunk_key_to_hf``; None for a name that is not a trunk parameter."""
    if key.startswith("lm_head."):
        return key
    if key.startswith("model."):
        return key[len("model."):]
    return None


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)  # the restricted unpickler (torch >= 2.10)
    except pickle.UnpicklingError:
        raise ForesightError(f"{path} is a pickle that holds more than tensors, so reading it could run code; "
                             f"foresight refuses it (convert the model to .safetensors where it came from)") from None
    except Exception as e:  # a truncated download, a foreign file: say which file, not a traceback
        detail = str(e).splitlines()[0][:120] if str(e) else ""
        raise ForesightError(f"cannot read weights from {path} ({type(e).__name__}: {detail})") from None


def _load_shapes(path: Path) -> dict[str, tuple]:
    """Tensor name -> shape of one weight file: a safetensors header alone (no tensor data), a .bin read whole."""
    if path.suffix != ".safetensors":
        return {k: tuple(v.shape) for k, v in _load_file(path).items()}
    from foresight.model.limits import safetensors_shapes

    try:
        return safetensors_shapes(path)
    except Exception as e:  # a truncated download, a foreign file
        detail = str(e).splitlines()[0][:120] if str(e) else ""
        raise ForesightError(f"cannot read weights from {path} ({type(e).__name__}: {detail})") from None


def read_hf_shapes(folder: Path) -> dict[str, tuple]:
    """Name -> shape of every tensor of a Hugging Face model folder, from the safetensors headers (no data)."""
    return read_hf_weights(folder, load=_load_shapes)


def read_hf_weights(folder: Path, load=_load_file) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face model folder: one file or shards listed in an index (``load`` reads one
    file)."""
    folder = Path(folder)
    for index_name in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in index_shards(index, folder):  # each one inside the folder, links followed
                if not (folder / shard).is_file():
                    raise ForesightError(f"{index} lists {shard}, which is missing from {folder}")
                state.update(load(folder / shard))
            return state
    for name in (SAFETENSORS, TORCH_BIN):
        if (folder / name).is_file():
            return load(inside(folder, name))
    raise ForesightError(f"no weights in {folder}: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}")


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Contiguous, unshared copies (safetensors refuses tensors that share storage, e.g. a tied head)."""
    from foresight.io import write_safetensors as write

    write(path, {k: v.detach().contiguous().clone() for k, v in tensors.items()}, metadata)
