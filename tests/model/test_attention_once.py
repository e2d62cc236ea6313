"""Attention written once (issue 25, item 3): ``Attention.forward``, ``Attention.forward_rows`` and
``StackedBlocks`` all go through ``layers.attend``, and give bit for bit (``torch.equal``) what the three
separate copies gave before. The copies are kept below, written out as they were at c2b4354, as the reference:
odd shapes, MHA and GQA, with and without qkv bias, no cache, the scalar cache (prefill, T = 1 steps, a chunk),
the per-row cache (with and without a shared RowStep), rows-restricted queries, and stacked heads."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from foresight.generate.stacked import StackedBlocks
from foresight.model import KVCache, ModelConfig
from foresight.model.layers import Attention, Block, Rotary, apply_rotary, attend, row_mask

# ---- the reference: the three copies as they were (c2b4354) -------------------------------------------------------

def _old_causal(q, k, v, past, mask=None):
    t = q.shape[2]
    if isinstance(past, torch.Tensor):
        if mask is None:
            mask = row_mask(past, t, k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if t == 1:
        return F.scaled_dot_product_attention(q, k, v)
    mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _old_forward(a: Attention, x, cos, sin, cache=None, step=None):
    b, t, _ = x.shape
    q = a.q_proj(x).view(b, t, a.n_heads, a.head_dim).transpose(1, 2)
    k = a.k_proj(x).view(b, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
    v = a.v_proj(x).view(b, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    past = 0
    if cache is not None:
        past = cache.offset
        if step is None:
            step = cache.row_step(t)
        k, v = cache.append(k, v, step)
    if a.n_kv_heads != a.n_heads:
        rep = a.n_heads // a.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    mask = None if step is None else step.mask
    return a.o_proj(_old_causal(q, k, v, past, mask).transpose(1, 2).reshape(b, t, -1))


def _old_forward_rows(a: Attention, x, cos, sin, cols):
    b, t, _ = x.shape
    n = cols.shape[0]
    q = a.q_proj(x[:, cols]).view(b, n, a.n_heads, a.head_dim).transpose(1, 2)
    k = a.k_proj(x).view(b, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
    v = a.v_proj(x).view(b, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos[cols], sin[cols]), apply_rotary(k, cos, sin)
    if a.n_kv_heads != a.n_heads:
        rep = a.n_heads // a.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    mask = torch.arange(t, device=x.device) <= cols[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return a.o_proj(out.transpose(1, 2).reshape(b, n, -1))


def _old_stacked(s: StackedBlocks, x, cos, sin, cache):
    n, (b, m, d) = s.n, x.shape
    kv = s.n_kv_heads * s.head_dim
    xs = x.reshape(1, b * m, d).expand(n, b * m, d)
    h = s._norm(xs, s.ln1, s.eps1)
    qkv = torch.bmm(h, s.w_qkv) if s.b_qkv is None else torch.baddbmm(s.b_qkv, h, s.w_qkv)
    q, k, v = qkv.split([d, kv, kv], dim=-1)
    q = q.reshape(n, b, m, s.n_heads, s.head_dim).transpose(2, 3)
    k = k.reshape(n, b, m, s.n_kv_heads, s.head_dim).transpose(2, 3)
    v = v.reshape(n * b, m, s.n_kv_heads, s.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin).flatten(0, 1), apply_rotary(k, cos, sin).flatten(0, 1)
    past = cache.offset
    step = cache.row_step(m)
    k, v = cache.append(k, v, step)
    if s.n_kv_heads != s.n_heads:
        rep = s.n_heads // s.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    y = _old_causal(q, k, v, past, None if step is None else step.mask)
    y = y.transpose(1, 2).reshape(n, b * m, d)
    x2 = xs + torch.bmm(y, s.w_o)
    gate, up = torch.bmm(s._norm(x2, s.ln2, s.eps2), s.w_gu).chunk(2, dim=-1)
    out = x2 + torch.bmm(F.silu(gate) * up, s.w_down)
    return out.reshape(n, b, m, d)


# ---- the cases --------------------------------------------------------------------------------------------------

HEADS = {"mha": (3, 3), "gqa": (6, 2)}  # (H, G); D = 36: head dim 12 or 6


def _cfg(heads: str, bias: bool) -> ModelConfig:
    h, g = HEADS[heads]
    return ModelConfig(vocab_size=11, hidden_size=36, n_layers=1, n_heads=h, n_kv_heads=g, intermediate_size=22,
                       qkv_bias=bias, init_std=0.3)


def _attn(heads: str, bias: bool) -> tuple[Attention, Rotary]:
    torch.manual_seed(0)
    cfg = _cfg(heads, bias)
    a = Attention(cfg)
    if bias:  # the default init zeroes biases: make them count
        for p in (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias):
            torch.nn.init.normal_(p, std=0.5)
    return a, Rotary(cfg.head_dim, cfg.rope_theta, 64)


CASES = pytest.mark.parametrize("heads, bias", [("mha", False), ("gqa", False), ("mha", True), ("gqa", True)])


@CASES
@pytest.mark.parametrize("b, t", [(1, 1), (1, 7), (3, 5)])
def test_forward_without_cache_is_unchanged(heads, bias, b, t):
    a, rope = _attn(heads, bias)
    x = torch.randn(b, t, 36)
    cos, sin = rope(t, x.device)
    assert torch.equal(a(x, cos, sin), _old_forward(a, x, cos, sin))


@CASES
@pytest.mark.parametrize("b", [1, 3])
def test_forward_with_scalar_cache_is_unchanged(heads, bias, b):
    """Prefill 5, three single-token steps (the B = 1 decode path), a chunk of 3, a truncation, then 2 more."""
    a, rope = _attn(heads, bias)
    new, old = KVCache(), KVCache()
    for t in [5, 1, 1, 1, 3, "cut", 2]:
        if t == "cut":
            new.truncate(7), old.truncate(7)
            continue
        x = torch.randn(b, t, 36)
        cos, sin = rope(t, x.device, new.offset)
        assert torch.equal(a(x, cos, sin, new), _old_forward(a, x, cos, sin, old))
        assert torch.equal(new.k, old.k) and torch.equal(new.v, old.v)


@CASES
@pytest.mark.parametrize("shared_step", [False, True])
def test_forward_with_per_row_cache_is_unchanged(heads, bias, shared_step):
    """Rows at different lengths (a speculative step's cut), per-row RoPE, T = 1 and T = 3 forwards."""
    a, rope = _attn(heads, bias)
    new, old = KVCache(), KVCache()
    x = torch.randn(3, 6, 36)
    cos, sin = rope(6, x.device)
    assert torch.equal(a(x, cos, sin, new), _old_forward(a, x, cos, sin, old))
    lengths = torch.tensor([6, 2, 4])
    new.truncate(lengths), old.truncate(lengths.clone())
    for t in [1, 3, 1]:
        x = torch.randn(3, t, 36)
        cos, sin = rope(t, x.device, new.offset)
        step = new.row_step(t) if shared_step else None
        old_step = old.row_step(t) if shared_step else None
        assert torch.equal(a(x, cos, sin, new, step), _old_forward(a, x, cos, sin, old, old_step))
        assert torch.equal(new.k, old.k) and torch.equal(new.lengths, old.lengths)


@CASES
@pytest.mark.parametrize("cols", [[0], [2, 3, 6], [0, 1, 2, 3, 4, 5, 6], [6]])
def test_forward_rows_is_unchanged(heads, bias, cols):
    a, rope = _attn(heads, bias)
    x = torch.randn(2, 7, 36)
    cos, sin = rope(7, x.device)
    cols = torch.tensor(cols)
    assert torch.equal(a.forward_rows(x, cos, sin, cols), _old_forward_rows(a, x, cos, sin, cols))


def test_forward_rows_gradients_are_unchanged():
    a, rope = _attn("gqa", True)
    x = torch.randn(2, 7, 36, requires_grad=True)
    cos, sin = rope(7, x.device)
    cols = torch.tensor([1, 4, 5])
    new = torch.autograd.grad(a.forward_rows(x, cos, sin, cols).square().sum(), [x, *a.parameters()])
    old = torch.autograd.grad(_old_forward_rows(a, x, cos, sin, cols).square().sum(), [x, *a.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(new, old))


def _stack(heads: str, bias: bool, n: int = 3) -> tuple[StackedBlocks, Rotary]:
    torch.manual_seed(1)
    cfg = _cfg(heads, bias)
    blocks = [Block(cfg) for _ in range(n)]
    for blk in blocks:
        for p in blk.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return StackedBlocks(blocks), Rotary(cfg.head_dim, cfg.rope_theta, 64)


@CASES
@pytest.mark.parametrize("b", [1, 2])
def test_stacked_blocks_are_unchanged(heads, bias, b):
    """Scalar cache (prefill, single steps, a chunk), then per-row lengths (the stacked rows head·B + b)."""
    s, rope = _stack(heads, bias)
    new, old = KVCache(), KVCache()
    for t in [4, 1, 1, 2]:
        x = torch.randn(b, t, 36)
        cos, sin = rope(t, x.device, new.offset)
        assert torch.equal(s(x, cos, sin, new), _old_stacked(s, x, cos, sin, old))
    own = torch.arange(b) % 3 + 5  # row b's own length (<= 8 positions cached)
    lengths = own.repeat(s.n)  # (n·B,), head-major as the drafter keeps them
    new.truncate(lengths), old.truncate(lengths.clone())
    for t in [1, 2]:
        x = torch.randn(b, t, 36)
        cos, sin = rope(t, x.device, new.offset[:b])  # (B, 1, t, Dh): per row, broadcast over the heads
        assert torch.equal(s(x, cos, sin, new), _old_stacked(s, x, cos, sin, old))
        assert torch.equal(new.k, old.k)


def test_explicit_mask_and_positions():
    """``attend`` with an explicit mask equals SDPA under that mask; with the causal mask it equals the causal path
    (the hook MuToR needs: any mask, per-token RoPE positions as gathered tables)."""
    a, rope = _attn("gqa", False)
    x = torch.randn(2, 5, 36)
    cos, sin = rope(5, x.device)
    q, k, v = a._heads(a.q_proj(x), 6), a._heads(a.k_proj(x), 2), a._heads(a.v_proj(x), 2)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(attend(q, k, v, cos, sin, mask=causal), _sdpa_reference(q, k, v, cos, sin, causal))
    torch.testing.assert_close(attend(q, k, v, cos, sin, mask=causal), attend(q, k, v, cos, sin))
    pos = torch.tensor([[0, 1, 1, 2, 3], [0, 0, 1, 2, 2]])  # per-token positions, e.g. registers beside tokens
    full_cos, full_sin = rope(4, x.device)
    cos_t, sin_t = full_cos[pos][:, None], full_sin[pos][:, None]  # (B, 1, T, Dh)
    odd = torch.rand(2, 1, 5, 5) < 0.6
    odd[..., 0] = True  # every query sees some key
    assert torch.equal(attend(q, k, v, cos_t, sin_t, mask=odd), _sdpa_reference(q, k, v, cos_t, sin_t, odd))


def _sdpa_reference(q, k, v, cos, sin, mask):
    b, _, t, _ = q.shape
    q = apply_rotary(q, cos, sin)
    k = apply_rotary(k, cos, sin).repeat_interleave(3, dim=1)
    v = v.repeat_interleave(3, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, -1)


class _CountOps(TorchDispatchMode):
    """Counts the aten operators a forward dispatches (views included): a cost that does not depend on the load."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _ops(fn) -> collections.Counter:
    with torch.no_grad(), _CountOps() as count:
        fn()
    return count.ops


@pytest.mark.parametrize("per_row", [False, True])
def test_decode_paths_dispatch_the_same_operators(per_row):
    """The fast paths cost what they did: a single-token decode step (B = 1, scalar cache) and a per-row step
    dispatch exactly the old copy's operators; the stacked step at most two more views (no copy, no kernel)."""
    a, rope = _attn("gqa", True)
    b = 2 if per_row else 1
    new, old = KVCache(), KVCache()
    x = torch.randn(b, 6, 36)
    cos, sin = rope(6, x.device)
    a(x, cos, sin, new), _old_forward(a, x, cos, sin, old)
    if per_row:
        new.truncate(torch.tensor([6, 3])), old.truncate(torch.tensor([6, 3]))
    x = torch.randn(b, 1, 36)
    cos, sin = rope(1, x.device, new.offset)
    assert _ops(lambda: a(x, cos, sin, new)) == _ops(lambda: _old_forward(a, x, cos, sin, old))

    s, rope = _stack("gqa", True)
    new, old = KVCache(), KVCache()
    x = torch.randn(b, 4, 36)
    cos, sin = rope(4, x.device)
    s(x, cos, sin, new), _old_stacked(s, x, cos, sin, old)
    x = torch.randn(b, 1, 36)
    cos, sin = rope(1, x.device, 4)
    extra = _ops(lambda: s(x, cos, sin, new))
    extra.subtract(_ops(lambda: _old_stacked(s, x, cos, sin, old)))
    assert {k: n for k, n in extra.items() if n} in ({}, {"view": 1}, {"view": 2})
