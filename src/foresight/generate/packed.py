"""Pre-packed Linears for CPU decoding: the same weights in oneDNN's blocked layout, for inference.

Decoding reads every weight once per forward, so a decoding step on a CPU is bound by memory bandwidth, and
a forward over T = 2..16 new tokens (speculative verification) should cost about what T = 1 costs. Under
PyTorch's default CPU matrix product (MKL sgemm on the plain (out, in) weight) it does not: on the
measurements in ``results/decode/costs-packed-cpu.md`` MKL's kernel for 2-11 rows reads the weights far more
slowly than its kernel for one row, and verifying a few tokens costs 1.4-2.0 plain steps. oneDNN's inner
product on a weight *reordered once* into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``)
streams the weight at about the same speed for 1..16 rows.

Pass the ``TrainableLM`` (``pack_linears(lm)``) to pack the trunk, the output head and the objectives' heads
(MTP heads, DS-MTP modules, TOP head: they live in ``lm.objectives``); ``pack_linears(lm.model)`` packs the
trunk and the output head only.

``pack_linears(module)`` swaps every ``nn.Linear`` under ``module`` for a ``PackedLinear``: still an
``nn.Linear`` holding the *same* ``weight`` and ``bias`` Parameters (so a tied output head stays tied, state
dicts, checkpoints and ``isinstance`` checks are unchanged), plus the packed copy that its forward uses. The
packed copy is fp32 like the weight; outputs differ from ``F.linear`` only by summation order (about 1e-6
relative), as between any two BLAS kernels. Costs: one more copy of the Linears' weights in memory.

``dtype=torch.bfloat16`` packs a bf16 copy instead: half the bytes per step, but *not* exact (activations are
rounded to bf16 on the way in; logits move by about 1e-2 relative, greedy tokens can differ from fp32), measured
and stated in ``results/decode/costs-bf16-cpu.md``; opt-in only.

Inference only: a ``PackedLinear`` in training mode raises a one-line error (``unpack_linears`` turns the
model back into plain Linears); with autograd recording it runs ``F.linear`` (the op has no backward). If the
weight is changed in place after packing (an optimizer step, ``load_state_dict``) it is re-packed at the next
forward (PyTorch counts in-place writes to a tensor: ``_version``). Where packing cannot apply (no mkldnn in
this PyTorch build, a model on CUDA or in a dtype other than fp32) the model is returned unchanged with one
note line.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from foresight.errors import ForesightError

# Rows the packed layout is tuned for: decoding runs 1..16 rows (1 plain step, 1 + drafts when verifying); the
# layout for 16 was as fast as the one for 1 at T = 1 and faster at T = 4..16 (results/decode/costs-packed-cpu.md).
ROWS_HINT = 16


def mkldnn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's CPU inner product with pre-packed weights."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _pack(weight: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """(out, in) fp32 weight -> the same matrix (rounded to ``dtype``) in oneDNN's blocked layout (opaque)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), rows)


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose inference forward uses a oneDNN pre-packed copy of its weight (module doc)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: int = ROWS_HINT, dtype: torch.dtype = torch.float32) -> PackedLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias  # the same Parameters: ties and state dicts unchanged
        new.training, new.rows, new.dtype = linear.training, rows, dtype
        new.repack()
        return new

    def repack(self) -> None:
        self._packed = _pack(self.weight, self.rows, self.dtype)
        self._bias = None if self.bias is None else self.bias.detach().to(self.dtype)
        self._packed_from = (self.weight.data_ptr(), self.weight._version)  # what the packed copy was made from

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the same Parameters."""
        plain = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(plain)
        plain.in_features, plain.out_features = self.in_features, self.out_features
        plain.weight, plain.bias, plain.training = self.weight, self.bias, self.training
        return plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise ForesightError("this model's Linears are packed for inference (foresight.generate.packed); call "
                                 "unpack_linears(model) before training it")
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)  # autograd (or another dtype): the plain op
        if (self.weight.data_ptr(), self.weight._version) != self._packed_from:
            self.repack()  # the weight was replaced or written in place since packing
        if self.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._packed, self.bias, "none", [], "")
        # bf16 weights: activations rounded to bf16 in, fp32 out (oneDNN accumulates in fp32)
        y = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype).contiguous(), self._packed, self._bias, "none", [], "")
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", packed=oneDNN {str(self.dtype).removeprefix('torch.')}"


def _why_not(model: nn.Module) -> str | None:
    """Why packing cannot apply to ``model`` (None if it can)."""
    if not mkldnn_linear_available():
        return "this PyTorch build has no oneDNN (mkldnn) inner product"
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        return f"packing is for CPU decoding and the model is on {', '.join(sorted(devices))}"
    dtypes = {m.weight.dtype for m in model.modules() if isinstance(m, nn.Linear)}
    if dtypes - {torch.float32}:
        return f"packing is for fp32 weights and the model's Linears are {', '.join(map(str, sorted(dtypes, key=str)))}"
    return None


def _replace(model: nn.Module, convert) -> int:
    """Replace every submodule ``m`` for which ``convert(m)`` is not None; returns how many were replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = convert(child)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count


def pack_linears(model: nn.Module, rows: int = ROWS_HINT, quiet: bool = False,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """Every ``nn.Linear`` under ``model`` (in place) -> ``PackedLinear`` (module doc); returns ``model``. Give
    a ``TrainableLM`` to include the objectives' heads. ``dtype=torch.bfloat16``: the packed copy in bf16 (half
    the bytes per step; *not* exact: logits move by ~1e-2 relative and greedy tokens can differ from fp32 - see
    results/decode/costs-bf16-cpu.md); fp32 (default) is exact up to summation order.

    Where packing cannot apply, ``model`` is returned unchanged and one note line goes to stderr (unless
    ``quiet``). Packing twice is a no-op. ``is_packed(model)`` says whether its Linears are packed."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ForesightError(f"packed Linears are fp32 or bf16, got {dtype}")
    why = _why_not(model)
    if why is not None:
        if not quiet:
            print(f"foresight: note: Linears not packed: {why}; decoding uses the plain Linears", file=sys.stderr)
        return model
    with torch.no_grad():
        _replace(model, lambda m: PackedLinear.from_linear(m, rows, dtype)
                 if isinstance(m, nn.Linear) and not isinstance(m, PackedLinear) else None)
    return model


def unpack_linears(model: nn.Module) -> nn.Module:
    """Undo ``pack_linears`` (in place): plain ``nn.Linear``s with the same Parameters; returns ``model``."""
    _replace(model, lambda m: m.to_linear() if isinstance(m, PackedLinear) else None)
    return model


def is_packed(model: nn.Module) -> bool:
    """Whether any Linear of ``model`` is packed."""
    return any(isinstance(m, PackedLinear) for m in model.modules())
