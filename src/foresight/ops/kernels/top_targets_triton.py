"""Triton path of ``objectives.top.top_targets``: sparse TOP targets in O(N·K) work, one program per position.

Math, per position (b, t) (TOP paper §3; sparse form in docs/objectives.md, "The sparse target"):
    s      = offset of the first scorable token after t (not ignore_index, not negative); K = min(W, 128)
    slot j = the token x[t + 1 + s + j], in the window when s + j < W and inside the stream
    scored = in the window, scorable, offset s + j <= ``horizon`` (if given), and the first occurrence of its
             id among the slots (an earlier slot with the same id is scorable, in the window and the horizon too)
    score  = −(s + j)  ("exact")   or   float(half(W − (s + j)))  ("paper": the reference runs' fp16 rounding)
    weight = softmax over the scored slots of score; a position with nothing scored gets all-zero weights
    ids    = the token where scored, else 0

The reference builds an N×V fp16 score tensor (1 GB at N = 16384, V = 32000); the twin sorts (B, T, K)
keys (O(N·K log K) with several (B, T, K) int64 temporaries). Here a program reads its K upcoming tokens
(neighbouring positions share them in L1/L2), finds first occurrences with a K×K comparison in registers
(BLOCK_J columns at a time), and writes only the (N, K) result: 12 bytes per slot.

Results equal the twin's: ids exactly, weights to fp32 rounding (the softmax sums in another order). On the GPU
the exponential is libdevice's ``expf`` (exact range reduction) and the division ``div.rn``, not ``tl.exp``'s
``x · log2 e`` then ``ex2.approx`` and Triton's approximate division, so weights stay within an ulp or two of
PyTorch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton.language as tl
from triton.language.extra import libdevice

from foresight.ops.kernels import interpreting
from foresight.ops.kernels.triton_common import block_k, compile_ptx, jit

MAX_SLOTS = 128  # K = min(window, MAX_SLOTS); the same constant as objectives.top (checked by a test)
_WINDOW_CAP = 2**30  # a window beyond any stream: same result, no int32 overflow in t + 1 + window


@dataclass(frozen=True)
class TargetKernelConfig:
    """Tiles of the target kernel, passed with each call (``top_targets(..., kernel=)``; the tests shrink them
    to cross every loop boundary on small inputs)."""

    block_j: int | None = None  # width of the K×K duplicate comparison; None: 16 compiled (BLOCK_K × 16 int64 in
    # registers per step), the whole K under the interpreter (numpy compares 128 × 128 at once, ~3× faster there)
    block_s: int = 128  # tokens read per step of the search for the first scorable token
    num_warps: int = 4


DEFAULT_CONFIG = TargetKernelConfig()


# Plain function, decorated with ``triton.jit`` at first launch (``triton_common.jit``: the decorator fixes
# interpreter or compiled mode when it runs). K is constexpr: one compile per K (in practice K = 128).
def _top_targets_kernel(
    tokens_ptr,  # (B, L) token stream, contiguous, int32 or int64
    horizon_ptr,  # (B, T) largest usable offset per position (HAS_HORIZON), else any pointer
    ids_ptr,  # (B, T, K) out: target ids, tokens' dtype
    w_ptr,  # (B, T, K) out: target weights, fp32
    seq_len,  # T
    length,  # L
    window,  # W (capped at 2^30)
    ignore_index,
    K: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PAPER: tl.constexpr,  # scores = float(half(W − d)) instead of −d
    HAS_HORIZON: tl.constexpr,
    PRECISE: tl.constexpr,  # libdevice expf (compiled) instead of tl.exp (the interpreter has no libdevice)
):
    row = tl.program_id(0)  # b · T + t
    b = row // seq_len
    t = row - b * seq_len
    stream = tokens_ptr + b.to(tl.int64) * length

    # 1. s = offset of the first scorable token in x[t+1 .. min(t+W, L−1)], BLOCK_S tokens per step. Usually
    #    found at once; a run of R ignored ids costs R / BLOCK_S steps, and the search stops at the window.
    lo = t + 1
    hi = tl.minimum(length, lo + window)
    first = hi  # stream index of the first scorable token; hi = none in the window
    pos = lo
    while (first == hi) & (pos < hi):
        idx = pos + tl.arange(0, BLOCK_S)
        tok = tl.load(stream + idx, mask=idx < hi, other=-1)
        ok = (idx < hi) & (tok >= 0) & (tok != ignore_index)
        first = tl.min(tl.where(ok, idx, hi), axis=0)
        pos += BLOCK_S
    s = first - lo  # with none found, every slot below lies outside the window or the stream

    # 2. The K slots at offsets d = s + j.
    j = tl.arange(0, BLOCK_K)
    d = s + j  # (BLOCK_K,) offsets from t + 1
    live = (j < K) & (d < window) & (lo + d < length)
    tok = tl.load(stream + lo + d, mask=live, other=-1)  # (BLOCK_K,)
    scorable = live & (tok >= 0) & (tok != ignore_index)
    if HAS_HORIZON:
        scorable = scorable & (d <= tl.load(horizon_ptr + row))  # stop at the document's end

    # 3. First occurrence: slot j is a repeat if an earlier slot holds the same id. Unscorable slots hold
    #    −1, ignore_index or a negative id, never equal to a scorable id, so plain equality suffices.
    repeats = tl.zeros([BLOCK_K], dtype=tl.int32)
    for j0 in range(0, K, BLOCK_J):
        jj = j0 + tl.arange(0, BLOCK_J)
        dj = s + jj
        tok_j = tl.load(stream + lo + dj, mask=(jj < K) & (dj < window) & (lo + dj < length), other=-1)
        same = (tok[:, None] == tok_j[None, :]) & (jj[None, :] < j[:, None])  # (BLOCK_K, BLOCK_J)
        repeats += tl.sum(same.to(tl.int32), axis=1)
    scored = scorable & (repeats == 0)

    # 4. Scores and their softmax over the scored slots.
    if PAPER:
        score = (window - d).to(tl.float32).to(tl.float16).to(tl.float32)  # exact int → fp32, RTNE → fp16
    else:
        score = -d.to(tl.float32)
    score = tl.where(scored, score, float("-inf"))
    top = tl.max(score, axis=0)  # −inf when nothing is scored
    x = score - tl.maximum(top, -1e30)  # score − top where scored, −inf elsewhere (never −inf − (−inf))
    if PRECISE:
        e = libdevice.exp(x)
    else:
        e = tl.exp(x)
    total = tl.sum(e, axis=0)
    w = tl.math.div_rn(e, tl.maximum(total, 1e-30) + tl.zeros_like(e))  # total ≥ 1 when anything is scored
    w = tl.where(total > 0, w, 0.0)
    out = row.to(tl.int64) * K + j
    tl.store(ids_ptr + out, tl.where(scored, tok, 0).to(ids_ptr.dtype.element_ty), mask=j < K)
    tl.store(w_ptr + out, w, mask=j < K)


def _block_j(k: int, interpret: bool, config: TargetKernelConfig) -> int:
    return min(config.block_j or (block_k(k) if interpret else 16), block_k(k))


@torch.no_grad()
def triton_top_targets(tokens: torch.Tensor, seq_len: int, window: int, *, ignore_index: int, scores: str,
                       horizon: torch.Tensor | None,
                       config: TargetKernelConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of ``objectives.top.top_targets`` (arguments checked by the caller).

    tokens (B, L) int32/int64, L >= seq_len + 1; horizon (B, seq_len) or None; ``config``: tiles (None:
    ``DEFAULT_CONFIG``). Returns ids (B, seq_len, K) in tokens' dtype and weights (B, seq_len, K) fp32,
    K = min(window, 128).
    """
    config = config or DEFAULT_CONFIG
    b, length = tokens.shape
    k = min(window, MAX_SLOTS)
    ids = torch.empty(b, seq_len, k, dtype=tokens.dtype, device=tokens.device)
    weights = torch.empty(b, seq_len, k, dtype=torch.float32, device=tokens.device)
    if b * seq_len == 0:
        return ids, weights
    tokens = tokens.contiguous()
    hz = horizon.contiguous() if horizon is not None else tokens  # the pointer is not read without a horizon
    jit(_top_targets_kernel)[(b * seq_len,)](
        tokens, hz, ids, weights, seq_len, length, min(window, _WINDOW_CAP), ignore_index,
        K=k, BLOCK_K=block_k(k), BLOCK_J=_block_j(k, interpreting(), config), BLOCK_S=config.block_s,
        PAPER=scores == "paper", HAS_HORIZON=horizon is not None, PRECISE=not interpreting(),
        num_warps=config.num_warps,
    )
    return ids, weights


# ----------------------------------------------------------------------------------- build check, no GPU
def compile_for_gpu(arch: int = 90, *, k: int = 128, paper: bool = False, horizon: bool = True,
                    token_dtype: str = "i64", config: TargetKernelConfig = DEFAULT_CONFIG) -> str:
    """Compile the kernel ahead of time for ``sm_<arch>`` (90: H100/H200) with no GPU; returns its PTX
    (see ``triton_common.compile_ptx``)."""
    types = {"tokens_ptr": f"*{token_dtype}", "horizon_ptr": "*i64", "ids_ptr": f"*{token_dtype}", "w_ptr": "*fp32",
             "seq_len": "i32", "length": "i32", "window": "i32", "ignore_index": "i32"}
    consts = {"K": k, "BLOCK_K": block_k(k), "BLOCK_J": _block_j(k, False, config), "BLOCK_S": config.block_s,
              "PAPER": paper, "HAS_HORIZON": horizon, "PRECISE": True}
    return compile_ptx(_top_targets_kernel, types, consts, arch=arch, num_warps=config.num_warps)
