"""Building blocks of the Llama-family trunk: RMSNorm, RoPE, grouped-query attention, SwiGLU, Block.

Shapes: B batch, T sequence, D hidden, H query heads, G key/value heads, Dh = D / H head dim.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from foresight.model.config import ModelConfig
from foresight.model.moe import MoE
from foresight.model.ultramem import UltraMem


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · w, computed in fp32 as Llama does, returned in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # fp32 for half inputs, fp64 stays fp64
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    """RoPE tables (cos, sin) of shape (T, Dh), in the 'rotate half' layout of Hugging Face Llama."""

    def __init__(self, head_dim: int, theta: float, max_seq_len: int, scaling: dict | None = None) -> None:
        super().__init__()
        from foresight.model.limits import EAGER_ROPE

        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        # The tables grow on use (forward), so a config's 10M context costs nothing until a sequence needs it;
        # row t is the same whatever the length built.
        self._build(min(max_seq_len, EAGER_ROPE))

    def _build(self, length: int, device: torch.device | None = None) -> None:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents)
        if self.scaling is not None:
            inv_freq = llama3_inv_freq(inv_freq, self.scaling)
        t = torch.arange(length, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)  # (T, Dh/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (T, Dh)
        # Not registered as buffers: they are derived from the config, so checkpoints need not carry them.
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, length: int, device: torch.device,
                offset: int | torch.Tensor = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions offset .. offset + length - 1: (T, Dh) each, or (B, 1, T, Dh) for a (B,) tensor
        ``offset`` (every row at its own position: batched speculative decoding; 1 broadcasts over heads)."""
        per_row = isinstance(offset, torch.Tensor)
        end = (int(offset.max()) if per_row and offset.numel() else int(offset)) + length
        if end > self.cos.shape[0] or self.cos.device != device:
            self._build(max(end, self.cos.shape[0]), device)
        if per_row:
            pos = offset.to(device)[:, None, None] + torch.arange(length, device=device)  # (B, 1, T)
            return self.cos[pos], self.sin[pos]
        return self.cos[offset : offset + length], self.sin[offset : offset + length]

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables (B, 1, T, Dh) for per-token position ids ``positions`` (B, T) long, any order and repeats allowed
        (MuToR's registers sit at the position of the token before their target); the 1 broadcasts over heads."""
        if positions.numel() and int(positions.min()) < 0:
            raise ValueError("position ids must be >= 0")
        end = int(positions.max()) + 1 if positions.numel() else 0
        if end > self.cos.shape[0] or self.cos.device != positions.device:
            self._build(max(end, self.cos.shape[0]), positions.device)
        return self.cos[positions[:, None]], self.sin[positions[:, None]]


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1's RoPE frequency scaling (Llama 3 herd paper, long-context pre-training; HF ``rope_type: llama3``).

    A frequency whose wavelength is shorter than original_max / high_freq_factor is kept; one longer than
    original_max / low_freq_factor is divided by ``factor``; in between the two are blended linearly in
    ``original_max / wavelength``. inv_freq: (Dh/2,) fp32.
    """
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    blend = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)  # 0 = fully scaled, 1 = kept
    blended = (1 - blend) * inv_freq / factor + blend * inv_freq
    keep = wavelength < original / high
    scaled = wavelength > original / low
    return torch.where(keep, inv_freq, torch.where(scaled, inv_freq / factor, blended))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh) rotated by position; cos/sin (T, Dh), or (B, 1, T, Dh) with positions per row."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    wide = torch.promote_types(x.dtype, torch.float32)
    return (x.to(wide) * cos.to(wide) + rotated.to(wide) * sin.to(wide)).to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        d, kv = cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, kv, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: "KVCache | None" = None,
                step: "RowStep | None" = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D). ``step``: the forward's RowStep when ``cache`` is on its per-row path (built
        here if not given). ``mask``: an explicit boolean mask (T, T) or (B, 1, T, T), True = may attend, instead
        of the causal one (no cache)."""
        q = self._heads(self.q_proj(x), self.n_heads)  # (B, H, T, Dh)
        k, v = self._heads(self.k_proj(x), self.n_kv_heads), self._heads(self.v_proj(x), self.n_kv_heads)
        return self.o_proj(attend(q, k, v, cos, sin, cache, step, mask=mask))

    def forward_rows(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The outputs (B, n, D) at positions ``cols`` (n,) ascending only: their queries over the keys and values
        of all T positions (training, no cache; cos/sin (T, Dh)). Row i equals ``forward(x, cos, sin)[:, cols[i]]``
        (the rows a loss reads, when only some are trained)."""
        q = self._heads(self.q_proj(x[:, cols]), self.n_heads)  # (B, H, n, Dh)
        k, v = self._heads(self.k_proj(x), self.n_kv_heads), self._heads(self.v_proj(x), self.n_kv_heads)
        return self.o_proj(attend(q, k, v, cos, sin, cols=cols))

    def _heads(self, y: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, T, heads·Dh) -> (B, heads, T, Dh), a view."""
        b, t, _ = y.shape
        return y.view(b, t, heads, self.head_dim).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           cache: "KVCache | None" = None, step: "RowStep | None" = None, cols: torch.Tensor | None = None,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention from projected heads: RoPE, KV cache, grouped-query attention, causal or given mask, heads merged.

    The one attention of the library (issue 25): ``Attention.forward`` (causal, or after a KV cache),
    ``Attention.forward_rows`` (queries at some columns only) and ``generate/stacked.py`` (n blocks' weights
    batched) differ only in how they project in and out, and call this between.

    q (*L, H, Tq, Dh), k and v (*L, G, T, Dh) with H a multiple of G: any leading dims L (the batch B, or the
    stacked form's (n, B), made one batch N = prod(L) after RoPE so that per-row tables broadcast over n).
    cos/sin: RoPE tables (T, Dh), or (B, 1, T, Dh) with positions per row (per-row cache) or per token (rows of
    ``Rotary`` gathered at any positions, e.g. registers sharing their target's position). ``cache``/``step``:
    k, v go into the KV cache (``KVCache.append``) and the queries sit after its ``offset``. ``cols`` (Tq,): the
    queries are those of positions ``cols`` of T (no cache): RoPE at ``cols``, query i sees keys 0..cols[i].
    ``mask``: an explicit boolean mask, (Tq, S) or (N, 1, Tq, S), True = may attend, used instead of the rules
    above (``Transformer.trunk_embeds``: MuToR's interleaved registers, objectives/mutor.py).
    Returns (N, Tq, H·Dh).
    """
    q_cos, q_sin = (cos, sin) if cols is None else (cos[cols], sin[cols])
    q, k = apply_rotary(q, q_cos, q_sin), apply_rotary(k, cos, sin)
    if q.dim() > 4:  # leading dims (n, B): one batch N, after RoPE (views; skipped on the decode path)
        q, k, v = q.flatten(0, -4), k.flatten(0, -4), v.flatten(0, -4)  # (N, H, Tq, Dh), (N, G, T, Dh)
    past = 0
    if cache is not None:
        past = cache.offset
        if step is None:
            step = cache.row_step(q.shape[2])  # None on the scalar path
        k, v = cache.append(k, v, step)  # (N, G, S, Dh): S = past + T, or the longest row's on the per-row path
    rep = q.shape[1] // k.shape[1]  # H / G query heads per key/value head
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is None and step is not None:
        mask = step.mask
    elif mask is None and cols is not None:
        mask = torch.arange(k.shape[2], device=k.device) <= cols[:, None]  # (Tq, T): query at cols[i] sees 0..cols[i]
    return causal_attention(q, k, v, past, mask).transpose(1, 2).flatten(2)  # (N, Tq, H·Dh)


@dataclass(frozen=True)
class RowStep:
    """Where one forward's T new positions go in per-row KV caches (batched speculative decoding).

    Built once per forward by whoever owns the caches (``Transformer.trunk`` for its layers, a drafter for
    its own cache) and handed to every layer: the caches of one model move together (the decoder cuts and
    keeps rows of all of them alike), so they share one mask and one write index instead of each layer
    rebuilding them. ``lengths`` is then the one tensor every cache holds after the forward.
    """

    mask: torch.Tensor  # (B, 1, T, S) bool: query i of row b may see key j iff j <= past[b] + i
    index: torch.Tensor  # (B, T) long: positions past[b] .. past[b] + T - 1 where row b's new keys go
    lengths: torch.Tensor  # (B,) long: past + T, every row's length after this forward


def row_step(past: torch.Tensor, t: int, s: int) -> RowStep:
    """The RowStep of T new positions after per-row lengths ``past`` (B,), with S keys in view afterwards."""
    index = past[:, None] + torch.arange(t, device=past.device)  # (B, T)
    return RowStep(mask=row_mask(past, t, s), index=index, lengths=past + t)


def row_mask(past: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """(B, 1, T, S) bool: query i of row b (position past[b] + i) may see key j iff j <= past[b] + i."""
    q_pos = past[:, None, None, None] + torch.arange(t, device=past.device)[:, None]  # (B, 1, T, 1)
    return torch.arange(s, device=past.device) <= q_pos


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int | torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA of queries q (B, H, T, Dh) at positions past + i over keys/values (B, H, S, Dh) at positions 0..S-1.

    ``mask`` (boolean, True = may attend), when given, decides alone: the forward's ``RowStep.mask``
    (B, 1, T, S) on the per-row path, the rows-restricted mask, or a caller's own. Without it, ``past`` is an int
    (every row alike: masks only where needed) or a (B,) tensor (each row at its own position, a per-row
    KVCache): query i of row b sees keys j <= past[b] + i. On that path the keys past a row's own end — another
    row's later positions, or this row's rejected drafts — lie beyond that bound and are hidden by the same
    comparison, so the mask is always used, even for T = 1 (built here when the caller has none).
    """
    t = q.shape[2]
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if isinstance(past, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=row_mask(past, t, k.shape[2]))
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if t == 1:
        return F.scaled_dot_product_attention(q, k, v)  # one new query sees every cached key: no mask to build
    # Query i (absolute position past + i) may see keys 0 .. past + i.
    mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class KVCache:
    """Keys and values of one attention layer for incremental decoding: (B, G, T_past, Dh) each.

    Stored in buffers that grow by doubling, so appending a token copies only that token (concatenating
    would copy the whole cache at every step: O(T²) over a generation). ``k`` and ``v`` are views of the
    filled part; ``truncate`` only moves the length back (rejected speculative drafts are overwritten).

    Two paths. Scalar (plain decoding, and anything with every row alike): ``length`` positions in every row.
    Per row (batched speculative decoding, where rows accept different numbers of drafts): ``truncate`` with
    a (B,) tensor sets ``lengths``, row b then holds positions 0 .. lengths[b]-1, and ``append`` writes each
    row's new keys at its own position (a scatter); ``length`` is then the longest row, the extent of the
    views. Keys past a row's own length are stale (rejected drafts) or zeros; ``causal_attention`` hides them
    and the row's next ``append`` overwrites them. Buffers start zeroed: a masked key still enters the
    softmax's product, and uninitialised memory could hold NaN/inf (0 · NaN = NaN).
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None  # (B, G, capacity, Dh)
        self._v: torch.Tensor | None = None
        self.length = 0
        self.lengths: torch.Tensor | None = None  # (B,) long on the per-row path, else None

    @property
    def k(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, : self.length]

    @property
    def v(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self.length]

    @property
    def offset(self) -> int | torch.Tensor:
        """Position of the next key: ``length``, or per row ``lengths`` (B,)."""
        return self.length if self.lengths is None else self.lengths

    def _reserve(self, end: int, like: torch.Tensor) -> None:
        """Make the buffers hold ``end`` positions, keeping the first ``length``."""
        if self._k is not None and end <= self._k.shape[2]:
            return
        capacity = max(end, 2 * (0 if self._k is None else self._k.shape[2]), 64)
        b, g, _, dh = like.shape
        grown_k = like.new_zeros(b, g, capacity, dh)
        grown_v = like.new_zeros(b, g, capacity, dh)
        if self.length:
            grown_k[:, :, : self.length] = self.k
            grown_v[:, :, : self.length] = self.v
        self._k, self._v = grown_k, grown_v

    def row_step(self, t: int) -> RowStep | None:
        """The RowStep of appending T positions (None on the scalar path): the mask and write positions that
        every cache holding the same lengths can share for one forward."""
        if self.lengths is None:
            return None
        return row_step(self.lengths, t, self.length + t)  # length = max(lengths): S keys in view afterwards

    def append(self, k: torch.Tensor, v: torch.Tensor,
               step: RowStep | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v (B, G, T, Dh); returns the whole cache (B, G, length + T, Dh) as views.

        Per-row path: row b's keys go to positions lengths[b] .. lengths[b] + T - 1, and the views extend to
        the longest row. ``step``: this forward's ``row_step(T)``, shared by the caller with the other caches
        of the model (built here if not given); the cache takes its ``lengths`` tensor as its own."""
        t = k.shape[2]
        if self.lengths is None:
            end = self.length + t
            self._reserve(end, k)
            self._k[:, :, self.length : end] = k
            self._v[:, :, self.length : end] = v
            self.length = end
            return self.k, self.v
        self._reserve(self.length + t, k)  # length = max(lengths): no row writes past length + T
        if step is None:
            step = self.row_step(t)
        index = step.index[:, None, :, None].expand_as(k)  # (B, G, T, Dh), a view
        self._k.scatter_(2, index, k)  # row b's keys at positions lengths[b] ..
        self._v.scatter_(2, index, v)
        self.lengths = step.lengths
        self.length += t
        return self.k, self.v

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (a long tensor of indices), in that order: finished rows leave a batch."""
        if self._k is None:
            return
        self._k, self._v = self._k[rows], self._v[rows]
        if self.lengths is not None:
            self.lengths = self.lengths[rows]
            self.length = int(self.lengths.max()) if self.lengths.numel() else 0

    def truncate(self, length: int | torch.Tensor) -> None:
        """Drop cached positions >= length (used when speculative drafts are rejected).

        A (B,) long tensor cuts each row at its own length and puts the cache on the per-row path for good;
        it must not exceed any row's current length (a cut never lengthens a row: not checked, which would
        cost a device sync per layer). The tensor is kept, not copied (never modify it in place); the caches of
        one model must be cut alike, since one forward shares one ``RowStep`` among them."""
        if not isinstance(length, torch.Tensor):
            self.length = min(self.length, length)
            if self.lengths is not None:
                self.lengths = self.lengths.clamp(max=length)
            return
        self.lengths = length
        self.length = int(length.max()) if length.numel() else 0


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x)).

    Trunk blocks (built with their ``layer`` index) follow ``cfg.ffn``: ``mlp`` is a SwiGLU, or an MoE
    (model/moe.py), or a SwiGLU with an UltraMemV2 ``memory`` beside it, ``h = norm(x); x = x + mlp(h) + mem(h)``
    (UltraMemV2; docs/memory.md), reading the trunk's shared value ``table``. Blocks without an index (MTP heads, DS-MTP
    modules) are always dense.

    Training path (grad enabled, no KV cache): with ``compile_backend`` set the block runs through
    ``torch.compile`` (one graph shared by every block of a shape, as torchtitan compiles per block); with
    ``checkpointing`` its activations are recomputed in the backward pass (``torch.utils.checkpoint``,
    non-reentrant). The trainer sets both; they are plain attributes, not state, so ``state_dict`` keys never
    change, and evaluation and generation (no grad, or a cache) run the eager ``_forward``.
    """

    def __init__(self, cfg: ModelConfig, layer: int | None = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        ffn = cfg.ffn if layer is not None else "dense"
        self.mlp = MoE(cfg) if ffn == "moe" else SwiGLU(cfg)
        self.memory = UltraMem(cfg, layer) if ffn == "ultramem" else None
        self.compile_backend: str | None = None  # torch.compile backend of the training path; None = eager
        self.checkpointing = False  # recompute this block's activations in the backward pass

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                step: RowStep | None = None, table: nn.Module | None = None,
                cols: torch.Tensor | None = None, with_aux: bool = False, mask: torch.Tensor | None = None):
        """``step``: the forward's RowStep for a per-row ``cache`` (see ``KVCache.row_step``), or None.
        ``table``: the trunk's shared ``MemoryTable`` (UltraMemV2 blocks only). ``cols`` (n,): the output at
        these positions only, (B, n, D) (``forward_rows``; through ``__call__`` so that module hooks, e.g.
        FSDP's gathering of the parameters, run). ``with_aux``: return ``(x, aux)``, ``aux`` this forward's
        auxiliary loss (an MoE block's load-balancing loss, a scalar; None for other blocks and without grad),
        so the caller owns it (the trunk); otherwise the output x (B, T, D) alone. ``mask``: an explicit boolean
        attention mask (T, T) or (B, 1, T, T), True = may attend, instead of the causal one (no cache, no cols;
        ``Transformer.trunk_embeds``)."""
        if mask is not None and (cache is not None or cols is not None):
            raise ValueError("an explicit attention mask is for a forward without cache and without cols")
        if cols is not None:
            return self.forward_rows(x, cos, sin, cols)
        if cache is None and torch.is_grad_enabled() and (self.compile_backend or self.checkpointing):
            x, aux = training_forward(self.compile_backend, self.checkpointing)(self, x, cos, sin, table, mask)
        else:
            x, aux = self._forward(x, cos, sin, cache, step, table, mask)
        return (x, aux) if with_aux else x

    def _forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                 step: RowStep | None = None, table: nn.Module | None = None, mask: torch.Tensor | None = None):
        """-> (output (B, T, D), auxiliary loss or None)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, step, mask)  # (B, T, D)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            y, aux = self.mlp(h)
            return x + y, aux
        if self.memory is not None:
            return x + self.mlp(h) + self.memory(h, table), None
        return x + self.mlp(h), None

    def forward_rows(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> the block's output (B, n, D) at positions ``cols`` (n,) only: attention queries, MLP and
        residual of those rows, keys and values from all T (``Attention.forward_rows``). Dense blocks only (an
        MoE's balance loss would see other tokens). Same training path as ``forward`` (compiled, checkpointed)."""
        if torch.is_grad_enabled() and (self.compile_backend or self.checkpointing):
            return training_forward_rows(self.compile_backend, self.checkpointing)(self, x, cos, sin, cols)
        return self._forward_rows(x, cos, sin, cols)

    def _forward_rows(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cols: torch.Tensor):
        x_rows = x[:, cols] + self.self_attn.forward_rows(self.input_layernorm(x), cos, sin, cols)  # (B, n, D)
        return x_rows + self.mlp(self.post_attention_layernorm(x_rows))


def _eager(block: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, table=None, mask=None):
    return block._forward(x, cos, sin, None, None, table, mask)


def _checkpointed(block: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, table=None, mask=None):
    # Saves only the inputs; the backward re-runs the block. Inside torch.compile this becomes one
    # activation-checkpoint region that the partitioner recomputes (the torchtitan order: checkpoint, then compile).
    return checkpoint(block._forward, x, cos, sin, None, None, table, mask, use_reentrant=False)


def _eager_rows(block: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cols: torch.Tensor):
    return block._forward_rows(x, cos, sin, cols)


def _checkpointed_rows(block: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cols: torch.Tensor):
    return checkpoint(block._forward_rows, x, cos, sin, cols, use_reentrant=False)


@functools.cache
def training_forward_rows(backend: str | None, checkpointing: bool):
    """``fn(block, x, cos, sin, cols)``: ``training_forward`` for ``Block.forward_rows``."""
    fn = _checkpointed_rows if checkpointing else _eager_rows
    return fn if backend is None else torch.compile(fn, backend=backend)


@functools.cache
def training_forward(backend: str | None, checkpointing: bool):
    """``fn(block, x, cos, sin, table, mask=None) -> (x, aux)`` for the training path (aux: as ``Block._forward``). A
    module-level function, compiled once per backend: blocks are arguments, not closures, so every block of one
    shape reuses one compiled graph (no recompile per layer), and a copied block never holds a function bound to
    its original."""
    fn = _checkpointed if checkpointing else _eager
    return fn if backend is None else torch.compile(fn, backend=backend)


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for every Linear and Embedding weight, zeros for biases, ones for norms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
