"""Reading and writing Hugging Face weight files, and the trunk's name mapping.

The trunk's parameter names already are Hugging Face Llama/Qwen2 names below ``model.``
(``embed_tokens``, ``layers.{i}.self_attn.q_proj``, ..., ``norm``), except the output head, which HF keeps at
the top level as ``lm_head``. So the mapping is a prefix, no renaming and no RoPE permutation (our RoPE uses
the rotate-half layout HF uses).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from foresight.errors import ForesightError

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


def _inside(folder: Path, name) -> bool:
    """A shard name from an index: a relative path that stays inside ``folder`` (symlinks resolved)."""
    if not isinstance(name, str) or not name or "\0" in name or Path(name).is_absolute():
        return False
    root = folder.resolve()
    return (root / name).resolve().is_relative_to(root)


def index_shards(index: Path) -> list[str]:
    """The shard file names a weight index (``*.index.json``) lists, or one line naming what is wrong with it:
    not JSON, no ``weight_map`` object, a shard name that is not a string (issue 21: these were tracebacks)."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError too; nested beyond reason
        raise ForesightError(f"{index} is not a valid weight index (not JSON: {str(e).splitlines()[0][:80]})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ForesightError(f"{index} is not a valid weight index (needs a 'weight_map' object of tensor name -> "
                             f"shard file)")
    bad = next((v for v in weight_map.values() if not isinstance(v, str)), None)
    if bad is not None:
        raise ForesightError(f"{index} is not a valid weight index (weight_map holds {json.dumps(bad)[:60]}, not a "
                             f"shard file name)")
    return sorted(set(weight_map.values()))


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face model folder: one file or shards listed in an index."""
    folder = Path(folder)
    for index_name in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            shards = index_shards(index)
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not _inside(folder, shard):
                    raise ForesightError(f"{index} lists the shard {shard!r}, which is not a file inside {folder}; "
                                         f"shard names must be plain file names in the model folder")
                if not (folder / shard).is_file():
                    raise ForesightError(f"{index} lists {shard}, which is missing from {folder}")
                state.update(_load_file(folder / shard))
            return state
    for name in (SAFETENSORS, TORCH_BIN):
        if (folder / name).is_file():
            return _load_file(folder / name)
    raise ForesightError(f"no weights in {folder}: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}")


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Contiguous, unshared copies (safetensors refuses tensors that share storage, e.g. a tied head)."""
    from foresight.io import write_safetensors as write

    write(path, {k: v.detach().contiguous().clone() for k, v in tensors.items()}, metadata)
