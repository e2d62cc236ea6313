"""Row-chunked evaluation of a per-row loss whose intermediate is (rows, V): only one chunk's (chunk, V) tensor is
alive at a time, in the forward and in the backward (each chunk is recomputed there: activation checkpointing).

The plain PyTorch path for losses that have no fused kernel (FSP-BCE, NextLat's KL); ``soft_ce.py`` is the fused
form for cross-entropies.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

ROW_CHUNK = 1024  # rows per chunk: (1024, V) fp32 logits, e.g. 200 MB at V = 50k


def map_row_chunks(fn: Callable[..., torch.Tensor], rows: tuple[torch.Tensor, ...],
                   shared: tuple[torch.Tensor, ...] = (), chunk: int = ROW_CHUNK) -> torch.Tensor:
    """``torch.cat([fn(*row_chunk, *shared) for each chunk of rows])``: every tensor of ``rows`` is (n, ...) and is
    cut into chunks of ``chunk`` rows; ``fn`` returns (chunk,) or (chunk, ...). With grad, each chunk's graph is
    dropped after its forward and rebuilt in the backward."""
    n = rows[0].shape[0]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*rows, *shared))
    parts = []
    for start in range(0, n, chunk):
        args = (*(t[start:start + chunk] for t in rows), *shared)
        parts.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    if not parts:
        return fn(*(t[:0] for t in rows), *shared)
    return torch.cat(parts)
