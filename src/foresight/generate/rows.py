"""Per-row indexing for batched speculative decoding, where every row of a batch sits at its own position.

An *index* is either an int (every row alike: plain slicing, the B = 1 path) or a (B,) long tensor (row b at
index[b]: a gather). Code written with these helpers runs unchanged on both paths, so the int path keeps the
cost of the original slicing code. Tensor indices are clamped into range: padding (past a row's valid part,
up to the longest row's) reads some in-range element, never out of bounds.
"""

from __future__ import annotations

import torch

Index = int | torch.Tensor


def pick(x: torch.Tensor, i: Index, dim: int = 1) -> torch.Tensor:
    """x at index i along ``dim``, row b (dim 0) at i[b]: (B, ..., T, ...) -> (B, ..., ...)."""
    if not isinstance(i, torch.Tensor):
        return x.select(dim, i)
    i = i.clamp(0, x.shape[dim] - 1).view(-1, *([1] * (x.dim() - 1)))
    shape = list(x.shape)
    shape[dim] = 1
    return x.gather(dim, i.expand(shape)).squeeze(dim)


def window(x: torch.Tensor, start: Index, length: int) -> torch.Tensor:
    """``length`` elements along dim 1 from ``start`` (per row): (B, T, ...) -> (B, length, ...)."""
    if not isinstance(start, torch.Tensor):
        return x[:, start : start + length]
    idx = (start[:, None] + torch.arange(length, device=x.device)).clamp(0, x.shape[1] - 1)  # (B, length)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, idx)


def clamp0(i: Index) -> Index:
    """max(i, 0), per row."""
    return i.clamp(min=0) if isinstance(i, torch.Tensor) else max(i, 0)


def longest(i: Index) -> int:
    """The largest entry of an index (a sync for tensors): a common length that covers every row."""
    return int(i.max()) if isinstance(i, torch.Tensor) else i

