"""Fast paths of the loss-layer ops, and the choice between them and the pure-PyTorch twins.

Three layers (DEVELOPERS.md, "Ops"): Triton kernels and their ``torch.autograd.Function`` live in
``soft_ce_triton.py``; the public functions in ``foresight.ops`` call ``resolve_impl`` and dispatch.
``top_targets_triton.py`` builds TOP targets (no gradient, so kernel → function); ``objectives.top.top_targets``
dispatches to it. ``triton_common.py`` holds what the two share (decoration per mode, tile sizes, ahead-of-time
compiling). Kernel settings (tiles, chunking) are frozen dataclasses passed with each call, never module state.
Nothing here imports Triton at module import time: the package works without it, and ``impl="auto"`` then
takes the PyTorch path.
"""

from __future__ import annotations

import os

import torch

from foresight.errors import ForesightError

IMPLS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the loss kernels' inputs
INDEX_DTYPES = (torch.int32, torch.int64)  # the TOP target kernel's token streams

_import_error: str | None = None  # why ``import triton`` failed (None: not tried yet or it worked)
_imported = False


def triton_import_error() -> str | None:
    """None if Triton imports here, else a one-line reason. Imports it on the first call only."""
    global _import_error, _imported
    if not _imported and _import_error is None:
        try:
            import triton  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install raising anything else
            _import_error = (f"triton cannot be imported ({type(exc).__name__}: {exc}); "
                             "install it with pip install 'triton>=3.0' (Linux)")
        else:
            _imported = True
    return _import_error


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``), as in CI."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of a CUDA device, e.g. (9, 0) for H100/H200."""
    return torch.cuda.get_device_capability(device)


def _triton_unusable(tensors: tuple[torch.Tensor, ...], dtypes: tuple[torch.dtype, ...] = TRITON_DTYPES) -> str | None:
    """None if the Triton path can run on these tensors, else why not (for the error message)."""
    for t in tensors:
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            return f"its kernel supports {names} inputs, not {t.dtype}"
        if t.device.type == "cpu" and not interpreting():
            return ("the tensors are on the CPU and TRITON_INTERPRET=1 is not set "
                    "(the Triton interpreter runs kernels on the CPU, slowly)")
        if t.device.type not in ("cuda", "cpu"):
            return f"it needs CUDA tensors, not {t.device.type}"
        if t.device.type == "cuda" and cuda_capability(t.device) < (8, 0):
            return f"it needs a GPU of compute capability 8.0 or newer (Ampere+), not {cuda_capability(t.device)}"
    return triton_import_error()


def resolve_impl(impl: str, *tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = TRITON_DTYPES) -> str:
    """``"torch"`` or ``"triton"`` for a request ``impl`` in ``IMPLS``; ``dtypes``: what the kernel accepts.

    ``"auto"``: Triton when every tensor is on CUDA in a supported dtype and Triton imports, else PyTorch.
    ``"triton"``: Triton, or a ``ForesightError`` saying why it cannot run (not installed, CPU tensors
    without ``TRITON_INTERPRET=1``, an unsupported dtype). ``"torch"``: always the PyTorch twin.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    if impl == "auto":
        if all(t.device.type == "cuda" for t in tensors) and _triton_unusable(tensors, dtypes) is None:
            return "triton"
        return "torch"
    reason = _triton_unusable(tensors, dtypes)
    if reason is not None:
        raise ForesightError(f"impl='triton' was requested but {reason}; use impl='auto' or impl='torch'")
    return "triton"
