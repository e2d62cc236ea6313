"""Linear layer + cross-entropy against a sparse soft target, in row chunks (pure PyTorch).

For each row t: ``loss_t = logsumexp(z_t) - sum_k w[t, k] * z_t[ids[t, k]]`` with ``z_t = h_t @ W.T``.
With K = 1 and w = 1 this is ordinary cross-entropy (NTP); with the TOP target (ids, weights) it is the
sparse ListNet loss of the TOP paper (§3; sparse form in docs/objectives.md).

This is the in-library twin of the fused GPU kernel: the CPU path and the ground truth for its tests.
It never holds more than ``chunk_rows`` rows of logits: the forward keeps only the per-row logsumexp,
the backward recomputes each chunk's logits, so peak memory is O(chunk_rows · V) rather than O(N · V).
Gradient: ``dL_t/dz_t = softmax(z_t) - scatter(ids_t, w_t)``.

``softcap`` c (Gemma 2's final-logit soft-capping) replaces the logits by ``c · tanh(z / c)`` before the loss;
the chain rule multiplies the gradient by ``1 - tanh²(z / c)``. Only the PyTorch twin implements it.

The public functions take ``impl``: ``"torch"`` is this twin, ``"triton"`` the fused GPU path in
``foresight.ops.kernels`` (issue #4), ``"auto"`` the latter on CUDA when Triton is installed.
"""

from __future__ import annotations

import torch

from foresight.errors import ForesightError
from foresight.ops.kernels import resolve_impl

# About 64 Mi fp32 logits per chunk (256 MiB): large enough to keep matmuls efficient.
_CHUNK_ELEMENTS = 1 << 26


def _chunk_rows(n: int, v: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, chunk_rows)
    return max(1, min(n, _CHUNK_ELEMENTS // max(v, 1)))


class _LinearSoftCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, weights, chunk_rows, compute_dtype=None, softcap=None):
        # hidden (N, D), weight (V, D), ids (N, K) long in [0, V), weights (N, K) float;
        # compute_dtype: the matmuls' dtype under autocast (inputs cast chunk by chunk), None = the inputs';
        # softcap: None, or c for logits c · tanh(z / c)
        n, v = hidden.shape[0], weight.shape[0]
        cast = (lambda t: t) if compute_dtype is None else (lambda t: t.to(compute_dtype))  # noqa: E731
        weight_c = cast(weight)
        step = _chunk_rows(n, v, chunk_rows)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 accumulation, fp64 stays fp64
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        loss = torch.empty(n, dtype=acc, device=hidden.device)
        w32 = weights.to(acc)
        for s in range(0, n, step):
            z = (cast(hidden[s : s + step]) @ weight_c.T).to(acc)  # (n_c, V)
            if softcap is not None:
                z = softcap * torch.tanh(z / softcap)
            lse[s : s + step] = torch.logsumexp(z, dim=-1)
            picked = z.gather(1, ids[s : s + step])  # (n_c, K)
            loss[s : s + step] = lse[s : s + step] - (w32[s : s + step] * picked).sum(-1)
        ctx.save_for_backward(hidden, weight, ids, w32, lse)
        ctx.step, ctx.cast, ctx.softcap = step, cast, softcap
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, ids, w32, lse = ctx.saved_tensors
        grad_loss = grad_loss.to(lse.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if need_w else None
        weight_c = ctx.cast(weight)
        for s in range(0, hidden.shape[0], ctx.step):
            h = ctx.cast(hidden[s : s + ctx.step])
            g = grad_loss[s : s + ctx.step, None]  # (n_c, 1)
            z = (h @ weight_c.T).to(lse.dtype)  # recompute (n_c, V)
            if ctx.softcap is not None:
                tanh = torch.tanh(z / ctx.softcap)  # (n_c, V)
                z = ctx.softcap * tanh
            z.sub_(lse[s : s + ctx.step, None]).exp_().mul_(g)  # g · softmax(z)
            z.scatter_add_(1, ids[s : s + ctx.step], -w32[s : s + ctx.step] * g)  # - g · q
            if ctx.softcap is not None:
                z.mul_(1 - tanh * tanh)  # through c · tanh(z / c)
            dz = z.to(h.dtype)
            if need_h:
                grad_h[s : s + ctx.step] = dz @ weight_c
            if need_w:
                grad_w += (dz.T @ h).to(lse.dtype)
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None, None


def linear_soft_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    *,
    chunk_rows: int | None = None,
    impl: str = "auto",
    kernel=None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Per-row loss (N,), fp32 (fp64 for fp64 inputs), of
    ``logsumexp(h W^T) - sum_k weights[:, k] * (h W^T)[ids[:, k]]``.

    hidden (N, D), weight (V, D), ids (N, K) with every entry in [0, V) (unused slots: any valid id with
    weight 0; the Triton path skips ids outside [0, V) where the twin raises), weights (N, K).
    Differentiable in ``hidden`` and ``weight``. Rows the caller wants to drop must be masked out of the
    returned vector (their gradient is then zero).
    ``chunk_rows`` caps the rows of logits held at once. ``impl``: ``"auto"`` (Triton on CUDA when it is
    installed, else PyTorch), ``"torch"``, or ``"triton"`` (an error if it cannot run here). ``kernel``: the
    Triton path's tiles and chunking (a ``soft_ce_triton.KernelConfig``; None: its defaults).
    Under autocast the matmuls run in the autocast dtype in the forward and in the recomputing backward
    alike (autocast itself reaches only the forward), with fp32 gradients for fp32 inputs.
    ``softcap``: c > 0 scores ``c · tanh(h W^T / c)`` instead of ``h W^T`` (Gemma 2); PyTorch twin only, so
    ``impl="auto"`` then takes it and ``impl="triton"`` is an error.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, D) and weight (V, D) expected, got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if ids.shape != weights.shape or ids.dim() != 2 or ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"ids and weights must both be (N, K) with N = {hidden.shape[0]}")
    compute_dtype = _autocast_dtype(hidden, weight)
    if softcap is not None:
        if impl == "triton":
            raise ForesightError("impl='triton' was requested but the Triton kernel has no logit soft-capping; "
                                 "use impl='auto' or impl='torch'")
        return _LinearSoftCE.apply(hidden, weight, ids.long(), weights, chunk_rows, compute_dtype, float(softcap))
    if resolve_impl(impl, hidden, weight) == "triton":
        from foresight.ops.kernels.soft_ce_triton import triton_linear_soft_cross_entropy  # imports Triton

        return triton_linear_soft_cross_entropy(hidden, weight, ids, weights, chunk_rows=chunk_rows,
                                                compute_dtype=compute_dtype, config=kernel)
    return _LinearSoftCE.apply(hidden, weight, ids.long(), weights, chunk_rows, compute_dtype)


def _autocast_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run ``hidden @ weight.T`` in, if that differs from the inputs', else None.

    The autograd Functions cast inside, chunk by chunk, because autocast reaches the forward's matmuls but
    not the backward's recomputation: fp32 inputs would otherwise get bf16 logits in the forward (their
    logsumexp) and fp32 logits in the backward. Casting inside (not before the Function) also saves no
    half-precision copy of the weight for the backward, and sums the fp32 gradients in fp32.
    """
    device = hidden.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        enabled = False
    if not enabled or torch.float64 in (hidden.dtype, weight.dtype):  # autocast leaves fp64 alone
        return None
    dtype = torch.get_autocast_dtype(device)
    return None if hidden.dtype == weight.dtype == dtype else dtype


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                         chunk_rows: int | None = None, impl: str = "auto", kernel=None,
                         softcap: float | None = None) -> torch.Tensor:
    """Per-row cross-entropy (N,) of ``h W^T`` against ``labels`` (N,); ignored rows give 0. ``impl``,
    ``kernel`` and ``softcap`` as above."""
    valid = labels != ignore_index
    ids = torch.where(valid, labels, torch.zeros_like(labels))[:, None]
    loss = linear_soft_cross_entropy(hidden, weight, ids, valid[:, None].float(), chunk_rows=chunk_rows, impl=impl,
                                     kernel=kernel, softcap=softcap)
    return loss * valid
