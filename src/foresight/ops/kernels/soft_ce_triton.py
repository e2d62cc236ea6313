"""Triton path of ``linear_soft_cross_entropy``: cuBLAS matmuls on row/vocab chunks + fused Triton row kernels.

Math, per row t (docs/objectives.md, "The sparse target"; TOP paper §3 for the ListNet loss):
    z_t = h_t W^T                              logits, (V,)
    q_t = Σ_k w_tk e_{id_tk}                   sparse soft target, K slots (ids may repeat: weights add)
    loss_t = LSE(z_t) − Σ_k w_tk z_t[id_tk]
    dL/dz_t = g_t (softmax(z_t) − q_t)         g_t = upstream gradient of loss_t
    dH = dZ W,   dW = dZ^T H

Design (a hybrid in the manner of Liger's fused linear CE; the kernels are our own):
  forward   for each chunk of C rows: Z = H_c W^T (cuBLAS, C×V, fp32 accumulation inside the matmul), then
            one Triton program per row reads its logits once: an online logsumexp over vocab tiles in fp32
            and the K-wide gather z[id_k]. Only lse (N,) is kept; Z is reused for the next chunk.
  backward  for each chunk of C rows and each vocab slab of Vs columns: recompute Z = H_c W_s^T, a Triton
            program per row overwrites it in place with dZ = g (exp(Z − lse) − q) — q touches only the K
            target columns, so it costs K loads and stores, not a V-wide comparison — then
            dH_c += dZ W_s and dW_s += dZ^T H_c (cuBLAS).
  memory    the workspace (logits chunk + accumulators) is bounded by ``KernelConfig.workspace_mib``; never N×V.
  autocast  fp32 inputs under autocast: the matmuls run in the autocast dtype (``compute_dtype``), inputs
            cast chunk by chunk (the forward holds one cast copy of the weight), fp32 gradients summed in
            fp32 straight into the outputs.

The results agree with the twin's (``foresight.ops.soft_ce``) to fp32 rounding for fp32 inputs: the logits
come from the same matmul, rounded to the input dtype the same way, and the reductions run in fp32. For
half inputs the gradients' partial sums are rounded in a different order (see ``_backward_plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton.language as tl

from foresight.ops.kernels.triton_common import block_k, compile_ptx, jit


@dataclass(frozen=True)
class KernelConfig:
    """Launch and chunking knobs, passed with each call (``linear_soft_cross_entropy(..., kernel=)``; the
    tests use tiny tiles to cross every boundary on small shapes, the loss-layer benchmark tunes them)."""

    workspace_mib: float = 48.0  # bound on the temporary memory of one forward or backward, MiB
    slab_cols: int = 4096  # Vs: vocab columns per backward matmul (a multiple of 128 keeps cuBLAS aligned)
    block_v: int = 4096  # vocab tile of the row kernels (a power of two)
    block_j: int = 16  # width of the K×K duplicate-id comparison in the backward kernel (power of two)
    num_warps: int = 8
    rows: int | None = None  # force C, the rows per chunk (tests); None = from the workspace


DEFAULT_CONFIG = KernelConfig()


# ---------------------------------------------------------------------------------------------- kernels
# Plain functions, decorated with ``triton.jit`` at first launch (``triton_common.jit``): the decorator fixes
# interpreter or compiled mode when it runs, and tests set TRITON_INTERPRET=1 after other modules imported Triton.
# Loop bounds (n_cols, K) are constexpr: one compile per vocabulary (slab) width and K, which a model has
# few of; and Triton 3.6's interpreter cannot take a runtime loop bound under numpy >= 2.4
# (it calls int() on a 1-element array).


def _lse_target_fwd_kernel(
    z_ptr,  # (C, V) logits of C rows, contiguous, input dtype
    ids_ptr,  # (C, K) int64 target ids, contiguous
    w_ptr,  # (C, K) target weights, contiguous, any float dtype
    lse_ptr,  # (C,) fp32 out: logsumexp_v z[t, v]
    loss_ptr,  # (C,) fp32 out: lse − Σ_k w_k z[t, id_k]
    n_cols: tl.constexpr,  # V
    K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # One program per row. Online logsumexp over tiles of BLOCK_V columns:
    #   m' = max(m, max_j z_j),  s' = s·exp(m − m') + Σ_j exp(z_j − m'),  lse = m + log(s)
    # (one exp per logit; the rescale is a scalar per tile).
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * n_cols
    m = float("-inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(z_row + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    # Target term Σ_k w_k z[id_k]: K scalar loads from the logits row (repeated ids simply add).
    k = tl.arange(0, BLOCK_K)
    ids = tl.load(ids_ptr + row * K + k, mask=k < K, other=-1)
    w = tl.load(w_ptr + row * K + k, mask=k < K, other=0.0).to(tl.float32)
    valid = (ids >= 0) & (ids < n_cols)  # masked slots (and out-of-range ids) read nothing
    z_ids = tl.load(z_row + ids, mask=valid, other=0.0).to(tl.float32)
    target = tl.sum(tl.where(valid, w * z_ids, 0.0), axis=0)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, lse - target)


def _softmax_grad_kernel(
    z_ptr,  # (C, Vs) logits of C rows × the vocab slab [col0, col0 + Vs), contiguous; overwritten with dZ
    lse_ptr,  # (C,) fp32 logsumexp of each row over the whole vocabulary (from the forward)
    g_ptr,  # (C,) fp32 upstream gradient dL/dloss_t
    ids_ptr,  # (C, K) int64 target ids (absolute vocabulary ids)
    w_ptr,  # (C, K) target weights
    n_cols: tl.constexpr,  # Vs
    col0,  # first vocabulary id of the slab
    K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    # dZ[t, v] = g_t (exp(z[t, v] − lse_t) − q_t[v]),  q_t[v] = Σ_{j : id_j = v} w_j.
    # Dense part for all columns, then the K target columns are overwritten with their exact value,
    # computed in fp32 from the logit read before the dense pass (one rounding to the storage dtype).
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * n_cols
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row)

    # 1. Target mass per slot, q_k = Σ_j w_j [id_j = id_k] (a K×K comparison, BLOCK_J columns at a time):
    #    slots sharing an id get the same value, so their duplicate stores in step 3 agree.
    k = tl.arange(0, BLOCK_K)
    ids_k = tl.load(ids_ptr + row * K + k, mask=k < K, other=-1)
    q_k = tl.zeros([BLOCK_K], dtype=tl.float32)
    for j0 in range(0, K, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        ids_j = tl.load(ids_ptr + row * K + j, mask=j < K, other=-1)
        w_j = tl.load(w_ptr + row * K + j, mask=j < K, other=0.0).to(tl.float32)
        same = ids_k[:, None] == ids_j[None, :]  # (BLOCK_K, BLOCK_J)
        q_k += tl.sum(tl.where(same, w_j[None, :], 0.0), axis=1)
    local = ids_k - col0  # column inside the slab
    in_slab = (k < K) & (local >= 0) & (local < n_cols)
    z_k = tl.load(z_row + local, mask=in_slab, other=0.0).to(tl.float32)
    dz_k = g * (tl.exp(z_k - lse) - q_k)
    # The row is overwritten in place below; the barrier keeps every thread's target reads before any
    # thread's dense stores (it also stops the compiler moving those loads down).
    tl.debug_barrier()

    # 2. Dense part: dZ = g · softmax over the slab.
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < n_cols
        z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(z_row + cols, (g * tl.exp(z - lse)).to(z_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()  # the dense stores to the target columns land before step 3 overwrites them

    # 3. Target columns: g (softmax − q).
    tl.store(z_row + local, dz_k.to(z_ptr.dtype.element_ty), mask=in_slab)


# --------------------------------------------------------------------------------------------- chunking
def _round_down(x: int, multiple: int) -> int:
    """x rounded down to a multiple (only when that keeps it positive): aligned matmul operands."""
    return x // multiple * multiple if x >= 2 * multiple else x


def _forward_rows(n: int, v: int, elt: int, chunk_rows: int | None, config: KernelConfig) -> int:
    """C for the forward: a C×V logits chunk fills the workspace."""
    rows = config.rows or _round_down(int(config.workspace_mib * 2**20) // (v * elt), 64)
    return max(1, min(rows, n, chunk_rows or n))


@dataclass
class _BackwardPlan:
    rows: int  # C: rows per chunk
    cols: int  # Vs: vocab columns per slab
    dh_buffer: bool  # sum a chunk's dH over the slabs in an fp32 (C, D) buffer (half in, half out, several slabs)
    dw_buffer: bool  # sum dW over the chunks in an fp32 (V, D) buffer (half in, half out, when it fits)


def _backward_plan(n: int, v: int, d: int, elt: int, half: bool, h_fp32: bool, w_fp32: bool,
                   chunk_rows: int | None, config: KernelConfig) -> _BackwardPlan:
    """Chunk sizes for the backward so that its workspace stays within ``config.workspace_mib``.

    ``elt``: bytes per element of the compute dtype; ``half``: it is bf16/fp16; ``h_fp32``/``w_fp32``: the
    gradient of hidden/weight is fp32 (fp32 inputs under autocast), so it is its own fp32 accumulator.
    Half inputs: dH of a chunk is summed over the slabs in fp32, so the trunk gradient is rounded once; dW
    is summed over the N/C chunks in fp32 when a V×D fp32 buffer takes at most half the workspace, else in
    place in the output dtype (one rounding per chunk, as Liger does) — large C keeps that count small.
    Half-precision partial products (C×D, Vs×D) carry the sums into fp32.
    """
    budget = int(config.workspace_mib * 2**20)
    cols = min(v, config.slab_cols)
    dw_buffer = half and not w_fp32 and v * d * 4 <= budget // 2
    if dw_buffer or (half and w_fp32):  # dW is summed in fp32: a (Vs, D) half partial (+ the fp32 buffer)
        budget -= cols * d * elt + (v * d * 4 if dw_buffer else 0)
    dh_buffer = half and not h_fp32 and cols < v
    dh_fp32 = dh_buffer or (half and h_fp32)  # dH is summed in fp32: a (C, D) half partial per row
    per_row = cols * elt + (d * elt if dh_fp32 else 0) + (d * 4 if dh_buffer else 0)  # logits, partial, buffer
    rows = config.rows or _round_down(max(1, budget // per_row), 64)
    return _BackwardPlan(max(1, min(rows, n, chunk_rows or n)), cols, dh_buffer, dw_buffer)


def _add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, part: torch.Tensor | None) -> None:
    """acc += a @ b: in place when the dtypes agree, else through a half-precision partial ``part``."""
    if part is None:
        acc.addmm_(a, b)
    else:
        acc.add_(torch.mm(a, b, out=part))


# --------------------------------------------------------------------------------------- autograd layer
class TritonLinearSoftCE(torch.autograd.Function):
    """Per-row ``logsumexp(h W^T) − Σ_k w_k (h W^T)[id_k]``, matmuls in ``compute_dtype`` (None: the inputs'),
    tiles and chunks from ``config``."""

    @staticmethod
    def forward(ctx, hidden, weight, ids, weights, chunk_rows, compute_dtype, config):
        # hidden (N, D), weight (V, D) float; ids (N, K) int64, weights (N, K) float, both contiguous
        cd = compute_dtype or hidden.dtype
        n, v, k = hidden.shape[0], weight.shape[0], ids.shape[1]
        rows = _forward_rows(n, v, cd.itemsize, chunk_rows, config)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
        weight_c = weight.to(cd)  # a copy only under autocast, for this forward alone
        buf = torch.empty(rows * v, dtype=cd, device=hidden.device)  # the one logits chunk, reused
        kernel = jit(_lse_target_fwd_kernel)
        with torch.autocast(hidden.device.type, enabled=False):
            for r0 in range(0, n, rows):
                c = min(rows, n - r0)
                z = buf[: c * v].view(c, v)
                torch.mm(hidden[r0 : r0 + c].to(cd), weight_c.t(), out=z)  # (C, V)
                kernel[(c,)](z, ids[r0 : r0 + c], weights[r0 : r0 + c], lse[r0:], loss[r0:], v, k,
                             BLOCK_V=config.block_v, BLOCK_K=block_k(k), num_warps=config.num_warps)
        ctx.save_for_backward(hidden, weight, ids, weights, lse)
        ctx.chunk_rows, ctx.cd, ctx.config = chunk_rows, cd, config
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, ids, weights, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None, None, None
        cd, f32, dev, config = ctx.cd, torch.float32, hidden.device, ctx.config
        n, d = hidden.shape
        v, k = weight.shape[0], ids.shape[1]
        half = cd != f32
        plan = _backward_plan(n, v, d, cd.itemsize, half, hidden.dtype == f32, weight.dtype == f32, ctx.chunk_rows,
                              config)
        g = grad_loss.to(f32).contiguous()  # (N,); a .sum() upstream arrives as a stride-0 view
        # Accumulators: the gradients themselves (zeroed), or fp32 buffers for half gradients (see the plan).
        grad_h = torch.zeros(hidden.shape, dtype=hidden.dtype, device=dev) if need_h else None  # (N, D)
        grad_w = torch.zeros(weight.shape, dtype=weight.dtype, device=dev) if need_w else None  # (V, D)
        dh_buf = torch.empty(plan.rows, d, dtype=f32, device=dev) if need_h and plan.dh_buffer else None
        dw = torch.zeros(v, d, dtype=f32, device=dev) if need_w and plan.dw_buffer else grad_w
        # Half partial products, needed where the accumulator is fp32 and the matmuls are not.
        dh_fp32 = need_h and half and (dh_buf is not None or grad_h.dtype == f32)
        dh_part = torch.empty(plan.rows * d, dtype=cd, device=dev) if dh_fp32 else None
        dw_part = torch.empty(plan.cols * d, dtype=cd, device=dev) if need_w and half and dw.dtype == f32 else None
        buf = torch.empty(plan.rows * plan.cols, dtype=cd, device=dev)  # the one logits chunk, reused
        kernel = jit(_softmax_grad_kernel)
        with torch.autocast(dev.type, enabled=False):
            for r0 in range(0, n, plan.rows):
                c = min(plan.rows, n - r0)
                h_c = hidden[r0 : r0 + c].to(cd)  # (C, D)
                if need_h:  # the chunk's dH accumulator (C, D)
                    dh_c = dh_buf[:c].zero_() if dh_buf is not None else grad_h[r0 : r0 + c]
                    dh_p = None if dh_c.dtype == cd else dh_part[: c * d].view(c, d)
                for c0 in range(0, v, plan.cols):
                    vs = min(plan.cols, v - c0)
                    w_s = weight[c0 : c0 + vs].to(cd)  # (Vs, D)
                    z = buf[: c * vs].view(c, vs)
                    torch.mm(h_c, w_s.t(), out=z)  # recompute the logits (C, Vs)
                    kernel[(c,)](z, lse[r0:], g[r0:], ids[r0 : r0 + c], weights[r0 : r0 + c], vs, c0, k,
                                 BLOCK_V=config.block_v, BLOCK_K=block_k(k), BLOCK_J=config.block_j,
                                 num_warps=config.num_warps)  # z is now dZ
                    if need_h:
                        _add_matmul(dh_c, z, w_s, dh_p)  # dH_c += dZ W_s
                    if need_w:
                        dw_s = dw[c0 : c0 + vs]
                        dw_p = None if dw_s.dtype == cd else dw_part[: vs * d].view(vs, d)
                        _add_matmul(dw_s, z.t(), h_c, dw_p)  # dW_s += dZ^T H_c
                if need_h and dh_buf is not None:
                    grad_h[r0 : r0 + c].copy_(dh_c)
        if need_w and dw is not grad_w:
            grad_w.copy_(dw)
        return grad_h, grad_w, None, None, None, None, None


def triton_linear_soft_cross_entropy(hidden, weight, ids, weights, *, chunk_rows=None, compute_dtype=None,
                                     config: KernelConfig | None = None):
    """The Triton path of ``foresight.ops.linear_soft_cross_entropy`` (arguments checked by the caller).

    ``compute_dtype``: the matmuls' dtype when it differs from the inputs' (autocast); None = theirs.
    ``config``: tiles and chunking (None: ``DEFAULT_CONFIG``).
    """
    if compute_dtype is None and hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight must share a dtype for impl='triton', got {hidden.dtype} and "
                         f"{weight.dtype}")
    return TritonLinearSoftCE.apply(hidden, weight, ids.long().contiguous(), weights.contiguous(), chunk_rows,
                                    compute_dtype, config or DEFAULT_CONFIG)


# ----------------------------------------------------------------------------------- build check, no GPU
def compile_for_gpu(arch: int = 90, dtype: str = "bf16", *, v: int = 32000, k: int = 128,
                    config: KernelConfig = DEFAULT_CONFIG) -> dict[str, str]:
    """Compile both kernels ahead of time for ``sm_<arch>`` (90: H100/H200) and return their PTX by name.

    Needs no GPU (see ``triton_common.compile_ptx``). Catches what the interpreter accepts but the compiler
    rejects (``tests/ops``; ``benchmarks/gpu_session.sh`` as a build check before a GPU session).
    """
    types = {"z_ptr": f"*{dtype}", "ids_ptr": "*i64", "w_ptr": "*fp32", "lse_ptr": "*fp32", "loss_ptr": "*fp32",
             "g_ptr": "*fp32", "col0": "i32"}  # every other argument is a constexpr
    consts = {"K": k, "BLOCK_V": config.block_v, "BLOCK_K": block_k(k), "BLOCK_J": config.block_j}
    widths = {_lse_target_fwd_kernel: v, _softmax_grad_kernel: min(v, config.slab_cols)}  # n_cols
    return {fn.__name__.strip("_"): compile_ptx(fn, types, {**consts, "n_cols": n_cols}, arch=arch,
                                                num_warps=config.num_warps)
            for fn, n_cols in widths.items()}
