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
from foresight.io import atomic_write

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


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def _write_streaming(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The safetensors layout (8-byte little-endian header length, JSON header, raw little-endian tensor bytes
    back to back), written one tensor at a time: ``safetensors.torch.save_file`` first turns every tensor into a
    bytes object, a second copy of the whole state in memory, which a large run cannot afford. Read back with the
    official parser (``load_state``)."""
    import sys

    if sys.byteorder != "little":
        raise OSError("checkpoints are written little-endian; this machine is big-endian")
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise TypeError(f"cannot store a {t.dtype} tensor ({name}) in a checkpoint")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the tensor data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                # (n,) bytes of one tensor: a view, copied to the CPU only if it lives elsewhere.
                f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))


def save_state(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (see ``foresight.io.atomic_write``)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    header = {"format": FORMAT, _KEY: json.dumps(tree, allow_nan=False)}
    return atomic_write(path, lambda tmp: _write_streaming(tmp, tensors, header))


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
