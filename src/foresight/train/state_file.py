"""A nested state (dicts, lists, tuples, numbers, strings, tensors) as one safetensors file, with no pickle.

Checkpoints are shared between people, so reading one must never run code. A ``.safetensors`` file is a JSON
header plus raw tensor bytes: tensors are stored by their key path (``lm/model.norm.weight``,
``optimizer/state/3/exp_avg``, ``rng_cpu``), and everything else (config, progress, optimiser hyper-parameters,
the tree's shape) is one JSON document in the header's metadata under ``foresight``, in which a tensor is
``{"__tensor__": name}``, a tuple ``{"__tuple__": [...]}`` and a dict with a non-string key (an optimiser's
parameter index) ``{"__items__": [[key, value], ...]}``. Decoding builds only these plain types, and tensors
come back bit for bit, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from foresight.errors import ForesightError
from foresight.io import write_safetensors

FORMAT = "foresight.state/1"
_KEY = "foresight"  # the header metadata entry that holds the JSON tree


def _encode(value, name: str, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        if name in tensors:
            raise ValueError(f"two tensors would be stored as {name!r}")
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{name}/{k}" if name else k, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, f"{name}/key{i}", tensors), _encode(v, f"{name}/{k}", tensors)]
                              for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no inf/nan; a float that is not finite is stored by name (an optimiser's lr can be inf).
        return value if math.isfinite(value) else {"__float__": repr(value)}
    raise TypeError(f"cannot store a {type(value).__name__} at {name!r} in a checkpoint (plain data only)")


def _decode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__tensor__":
            if inner not in tensors:
                raise ValueError(f"tensor {inner!r} is named in the header but missing")
            return tensors[inner]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in inner)
        if tag == "__items__":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
        if tag == "__float__":
            return float(inner)  # only "inf", "-inf" or "nan" are ever written
    return {k: _decode(v, tensors) for k, v in value.items()}


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two sharing memory (safetensors refuses shared storage, e.g. a tied head)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if t.numel() and (key in seen or storage.nbytes() != t.nbytes):
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_state(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (see ``foresight.io.atomic_write``)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    header = {"format": FORMAT, _KEY: json.dumps(tree, allow_nan=False)}
    return write_safetensors(path, _unshared(tensors), header)


def load_state(path: Path, map_location="cpu") -> dict:
    """Read a file written by ``save_state``; a ``ForesightError`` naming the file if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT or _KEY not in header:
                raise ForesightError(f"{path} is a safetensors file but not a foresight checkpoint "
                                     f"(no '{FORMAT}' header)")
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
        state = _decode(json.loads(header[_KEY]), tensors)
    except ForesightError:
        raise
    except Exception as e:  # truncated, corrupted or foreign: say which file, not where the parser stopped
        detail = str(e).splitlines()[0][:160] if str(e) else ""
        raise ForesightError(f"{path} is not a readable foresight checkpoint ({type(e).__name__}: {detail}); "
                             f"it may be truncated or damaged") from None
    if not isinstance(state, dict):
        raise ForesightError(f"{path} is not a foresight checkpoint (its header holds no mapping)")
    if map_location is not None and str(map_location) != "cpu":
        state = _to(state, map_location)
    return state


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value
