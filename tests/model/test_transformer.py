"""The Llama-family trunk against literal re-implementations written from the formulas.

Everything runs on CPU with small, odd shapes. The module runs in fp32; every reference is written out here
(loops, explicit q k^T / sqrt(Dh), -inf causal mask, per-pair RoPE rotation) and computed in fp64 from the
module's parameters, never by calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from foresight.model import KVCache, ModelConfig, RMSNorm, Transformer
from foresight.model.layers import Attention, Rotary, apply_rotary, llama3_inv_freq

from helpers import randomize_weights

ATOL, RTOL = 2e-5, 1e-4


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=37, hidden_size=36, n_layers=2, n_heads=6, n_kv_heads=2, intermediate_size=52,
                rope_theta=500.0, norm_eps=1e-5, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


def _model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(_cfg(**kw))
    randomize_weights(model, seed + 100)
    return model.eval()


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double()


# ---------------------------------------------------------------------------------------------------------
# Literal references (fp64)


def ref_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def ref_rope(x: torch.Tensor, theta: float, start: int = 0) -> torch.Tensor:
    """x (B, H, T, Dh). Dims i and i + Dh/2 form a pair rotated by angle pos * theta^(-2i/Dh)."""
    dh = x.shape[-1]
    half = dh // 2
    out = torch.empty_like(x)
    for t in range(x.shape[2]):
        pos = start + t
        for i in range(half):
            angle = pos * theta ** (-2.0 * i / dh)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, :, t, i], x[:, :, t, i + half]
            out[:, :, t, i] = a * c - b * s
            out[:, :, t, i + half] = a * s + b * c
    return out


def ref_linear(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    y = x @ _d(lin.weight).T
    return y if lin.bias is None else y + _d(lin.bias)


def ref_attention(x: torch.Tensor, attn: Attention, theta: float, start: int = 0) -> torch.Tensor:
    """x (B, T, D) fp64, no cache: explicit scores, -inf causal mask, softmax, kv head h // (H / G)."""
    b, t, _ = x.shape
    h, g, dh = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = ref_linear(x, attn.q_proj).view(b, t, h, dh).permute(0, 2, 1, 3)
    k = ref_linear(x, attn.k_proj).view(b, t, g, dh).permute(0, 2, 1, 3)
    v = ref_linear(x, attn.v_proj).view(b, t, g, dh).permute(0, 2, 1, 3)
    q, k = ref_rope(q, theta, start), ref_rope(k, theta, start)
    mask = torch.zeros(t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(t):
            if j > i:
                mask[i, j] = float("-inf")
    heads = []
    for head in range(h):
        kv = head // (h // g)  # each kv head serves h/g consecutive query heads
        scores = q[:, head] @ k[:, kv].transpose(-1, -2) / math.sqrt(dh) + mask
        weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        heads.append(weights @ v[:, kv])  # (B, T, Dh)
    return torch.cat(heads, dim=-1) @ _d(attn.o_proj.weight).T


def ref_transformer(model: Transformer, ids: torch.Tensor):
    """Logits, output of the last block, input of the last block — all fp64."""
    cfg = model.cfg
    x = _d(model.embed_tokens.weight)[ids]
    last_input = x
    for blk in model.layers:
        last_input = x
        hn = ref_rmsnorm(x, _d(blk.input_layernorm.weight), cfg.norm_eps)
        x = x + ref_attention(hn, blk.self_attn, cfg.rope_theta)
        hn = ref_rmsnorm(x, _d(blk.post_attention_layernorm.weight), cfg.norm_eps)
        gate = hn @ _d(blk.mlp.gate_proj.weight).T
        up = hn @ _d(blk.mlp.up_proj.weight).T
        silu = gate / (1.0 + torch.exp(-gate))
        x = x + (silu * up) @ _d(blk.mlp.down_proj.weight).T
    final = x
    hidden = ref_rmsnorm(x, _d(model.norm.weight), cfg.norm_eps)
    return hidden @ _d(model.lm_head.weight).T, final, last_input


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------------------
# Layers


def test_rmsnorm_matches_formula():
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(13, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(13, generator=g))
    x = 3.0 * torch.randn(3, 5, 13, generator=g) + 0.5
    expected = torch.empty(3, 5, 13, dtype=torch.float64)
    for i in range(3):
        for j in range(5):
            row = x[i, j].double()
            rms = math.sqrt(sum(float(v) ** 2 for v in row) / 13 + 1e-5)
            expected[i, j] = row / rms * norm.weight.double()
    out = norm(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    _close(out, expected, atol=1e-6, rtol=1e-5)


def test_rmsnorm_eps_matters_for_tiny_inputs():
    norm = RMSNorm(7, eps=1e-2)
    x = torch.full((1, 7), 1e-3)
    # sqrt(1e-6 + 1e-2) ~ 0.1, so the output is ~1e-2, not 1.
    _close(norm(x), torch.full((1, 7), 1e-3 / math.sqrt(1e-6 + 1e-2), dtype=torch.float64), atol=1e-7)


@pytest.mark.parametrize("dh, theta, offset", [(6, 10000.0, 0), (10, 500.0, 3), (2, 10.0, 11)])
def test_apply_rotary_matches_per_pair_rotation(dh, theta, offset):
    g = torch.Generator().manual_seed(dh)
    x = torch.randn(2, 3, 7, dh, generator=g)
    rot = Rotary(dh, theta, max_seq_len=8)  # offset + 7 > 8 for two cases: the tables must grow
    cos, sin = rot(7, x.device, offset)
    assert cos.shape == sin.shape == (7, dh)
    out = apply_rotary(x, cos, sin)
    assert out.dtype == x.dtype
    _close(out, ref_rope(x.double(), theta, offset), atol=1e-5)


def test_rotary_keeps_norm_of_each_pair_and_is_identity_at_position_zero():
    x = torch.randn(1, 1, 5, 8, generator=torch.Generator().manual_seed(1))
    cos, sin = Rotary(8, 10000.0, 16)(5, x.device)
    out = apply_rotary(x, cos, sin)
    _close(out[:, :, 0], x[:, :, 0], atol=0, rtol=0)
    pair_norm = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    _close(pair_norm(out), pair_norm(x), atol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [6, 1, 2, 3])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_attention_matches_literal_implementation(n_kv_heads, qkv_bias):
    cfg = _cfg(n_kv_heads=n_kv_heads, qkv_bias=qkv_bias)
    attn = Attention(cfg)
    randomize_weights(attn, seed=n_kv_heads)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 7, cfg.hidden_size, generator=g)
    cos, sin = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_seq_len)(7, x.device)
    out = attn(x, cos, sin)
    assert out.shape == (3, 7, cfg.hidden_size)
    _close(out, ref_attention(x.double(), attn, cfg.rope_theta))


def test_attention_heads_are_not_interchangeable():
    """Guard on the reference: mapping query head h to kv head h % G instead of h // (H/G) is detectable."""
    cfg = _cfg(n_kv_heads=2)
    attn = Attention(cfg)
    randomize_weights(attn, seed=3)
    x = torch.randn(2, 5, cfg.hidden_size, generator=torch.Generator().manual_seed(5))
    cos, sin = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_seq_len)(5, x.device)
    with torch.no_grad():
        attn.k_proj.weight[cfg.head_dim:] *= 3.0  # make the two kv heads very different
    out = attn(x, cos, sin).double()
    assert not torch.allclose(out, ref_attention_mod(x.double(), attn, cfg.rope_theta), atol=1e-3)
    _close(out, ref_attention(x.double(), attn, cfg.rope_theta))


def ref_attention_mod(x, attn, theta):
    """Same as ref_attention but with the wrong (modulo) head grouping."""
    b, t, _ = x.shape
    h, g, dh = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = ref_rope(ref_linear(x, attn.q_proj).view(b, t, h, dh).permute(0, 2, 1, 3), theta)
    k = ref_rope(ref_linear(x, attn.k_proj).view(b, t, g, dh).permute(0, 2, 1, 3), theta)
    v = ref_linear(x, attn.v_proj).view(b, t, g, dh).permute(0, 2, 1, 3)
    mask = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    heads = [torch.softmax(q[:, i] @ k[:, i % g].transpose(-1, -2) / math.sqrt(dh) + mask, -1) @ v[:, i % g]
             for i in range(h)]
    return torch.cat(heads, -1) @ _d(attn.o_proj.weight).T


# ---------------------------------------------------------------------------------------------------------
# Whole trunk


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(n_kv_heads=6, tie_embeddings=True),
        dict(n_kv_heads=1, qkv_bias=True, n_layers=3),
        dict(n_kv_heads=3, qkv_bias=True, tie_embeddings=True, max_seq_len=4),  # RoPE tables must grow
    ],
    ids=["gqa2", "mha-tied", "mqa-bias-3layers", "gqa3-bias-tied-grow"],
)
def test_transformer_forward_matches_literal_reimplementation(kw):
    model = _model(**kw)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 9), generator=torch.Generator().manual_seed(11))
    logits = model(ids)
    assert logits.shape == (3, 9, model.cfg.vocab_size)
    ref_logits, ref_final, ref_last_input = ref_transformer(model, ids)
    _close(logits, ref_logits, atol=1e-4)

    out = model.trunk(ids)
    _close(out.final, ref_final, atol=1e-4)
    _close(out.last_input, ref_last_input, atol=1e-4)
    _close(out.hidden, ref_rmsnorm(ref_final, _d(model.norm.weight), model.cfg.norm_eps), atol=1e-4)
    assert out.cos.shape == out.sin.shape == (9, model.cfg.head_dim)
    torch.testing.assert_close(model.lm_head(out.hidden), logits, atol=0, rtol=0)


def test_parameter_names_follow_hf_llama():
    model = Transformer(_cfg(n_layers=1, qkv_bias=True))
    names = {n for n, _ in model.named_parameters()}
    expected = {
        "embed_tokens.weight", "norm.weight", "lm_head.weight",
        "layers.0.input_layernorm.weight", "layers.0.post_attention_layernorm.weight",
        "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
        "layers.0.self_attn.q_proj.bias", "layers.0.self_attn.k_proj.bias", "layers.0.self_attn.v_proj.bias",
        "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
    }
    assert names == expected
    assert not list(model.buffers())  # RoPE tables are derived, not saved


def test_causality_changing_token_t_leaves_earlier_logits_unchanged():
    model = _model(seed=1)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(2))
    base = model(ids)
    for t in (0, 4, 10):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 5) % model.cfg.vocab_size
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert (out[:, t:] - base[:, t:]).abs().amax(dim=-1).min() > 1e-4  # later positions do see it


# ---------------------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("n_kv_heads", [6, 2, 1])
def test_kv_cache_in_pieces_equals_one_call(n_kv_heads):
    model = _model(seed=2, n_kv_heads=n_kv_heads, qkv_bias=True, max_seq_len=6)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 9), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    caches = model.new_caches()
    assert len(caches) == model.cfg.n_layers and all(isinstance(c, KVCache) and c.length == 0 for c in caches)
    outs, start = [], 0
    for size in (5, 1, 3):
        outs.append(model(ids[:, start : start + size], caches))
        start += size
        assert all(c.length == start for c in caches)
        assert caches[0].k.shape == (3, n_kv_heads, start, model.cfg.head_dim)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-4)


def test_kv_cache_one_token_at_a_time_equals_one_call():
    model = _model(seed=3, n_kv_heads=3)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(4))
    caches = model.new_caches()
    steps = torch.cat([model(ids[:, i : i + 1], caches) for i in range(7)], dim=1)
    torch.testing.assert_close(steps, model(ids), atol=1e-5, rtol=1e-4)


def test_kv_cache_truncate_then_refeed():
    model = _model(seed=4, n_kv_heads=2)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9), generator=g)
    caches = model.new_caches()
    model(ids, caches)
    for c in caches:
        c.truncate(6)
    assert all(c.length == 6 and c.v.shape[2] == 6 for c in caches)

    # Re-feeding the same tokens gives the same logits as the one-call forward.
    again = model(ids[:, 6:], caches)
    torch.testing.assert_close(again, model(ids)[:, 6:], atol=1e-5, rtol=1e-4)

    # Feeding different tokens after a truncation (a rejected draft) matches the forward of the new sequence.
    for c in caches:
        c.truncate(6)
    other = torch.randint(0, model.cfg.vocab_size, (2, 4), generator=g)
    out = model(other, caches)
    torch.testing.assert_close(out, model(torch.cat([ids[:, :6], other], dim=1))[:, 6:], atol=1e-5, rtol=1e-4)

    # Truncating to zero is a fresh start.
    for c in caches:
        c.truncate(0)
    assert all(c.length == 0 for c in caches)
    torch.testing.assert_close(model(ids[:, :4], caches), model(ids[:, :4]), atol=1e-5, rtol=1e-4)


def test_empty_cache_truncate_is_a_noop():
    cache = KVCache()
    cache.truncate(3)
    assert cache.length == 0 and cache.k is None


def test_cache_grows_past_its_capacity_and_truncate_overwrites():
    # 150 positions in chunks of 1..5 cross the initial capacity (64) and two doublings; the views must equal a
    # plain concatenation, and positions rewritten after a truncate must replace the old ones.
    torch.manual_seed(0)
    cache, ks, vs, at = KVCache(), [], [], 0
    while at < 150:
        n = 1 + at % 5
        k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
        out_k, out_v = cache.append(k, v)
        ks.append(k), vs.append(v)
        at += n
        assert torch.equal(out_k, torch.cat(ks, dim=2)) and torch.equal(out_v, torch.cat(vs, dim=2))
    cache.truncate(100)
    k, v = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    out_k, out_v = cache.append(k, v)
    assert out_k.shape[2] == 107 and cache.length == 107
    assert torch.equal(out_k, torch.cat([torch.cat(ks, dim=2)[:, :, :100], k], dim=2))
    assert torch.equal(out_v, torch.cat([torch.cat(vs, dim=2)[:, :, :100], v], dim=2))



def test_rotary_per_row_offsets_equal_the_scalar_tables():
    rot = Rotary(8, 500.0, 4)  # tables grow to the largest row's end
    offset = torch.tensor([0, 7, 3])
    cos, sin = rot(5, torch.device("cpu"), offset)
    assert cos.shape == (3, 1, 5, 8)
    for b, o in enumerate(offset.tolist()):
        want_cos, want_sin = rot(5, torch.device("cpu"), o)
        assert torch.equal(cos[b, 0], want_cos) and torch.equal(sin[b, 0], want_sin)
    x = torch.randn(3, 2, 5, 8)
    got = apply_rotary(x, cos, sin)  # (B, H, T, Dh) with (B, 1, T, Dh) tables: each row rotated at its positions
    for b, o in enumerate(offset.tolist()):
        assert torch.equal(got[b : b + 1], apply_rotary(x[b : b + 1], *rot(5, torch.device("cpu"), o)))
        torch.testing.assert_close(_d(got[b : b + 1]), ref_rope(_d(x[b : b + 1]), 500.0, o), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n_kv_heads", [6, 2])
def test_kv_cache_per_row_lengths_equal_each_rows_own_forward(n_kv_heads):
    """Rows cut at their own lengths (rejected drafts) and fed blocks at their own positions: every row's
    logits equal the one-call forward of that row's sequence. The stale keys a row leaves past its length
    are hidden, then overwritten."""
    model = _model(seed=6, n_kv_heads=n_kv_heads, qkv_bias=True, max_seq_len=6)
    g = torch.Generator().manual_seed(7)
    seqs = torch.randint(0, model.cfg.vocab_size, (3, 40), generator=g)  # each row's true sequence
    caches = model.new_caches()
    model(torch.randint(0, model.cfg.vocab_size, (3, 6), generator=g), caches)  # junk: overwritten below
    lengths = torch.tensor([0, 0, 0])
    for c in caches:
        c.truncate(lengths)  # the per-row path from here on
    assert caches[0].lengths.tolist() == [0, 0, 0] and caches[0].length == 0
    full = model(seqs)  # (3, 40, V)
    # (block width, rows' accepted lengths in that block): widths 1 exercise the T = 1 mask path too.
    plan = [(5, [5, 5, 5]), (4, [1, 4, 0]), (1, [1, 1, 1]), (3, [3, 0, 2]), (4, [2, 4, 1]), (1, [0, 1, 1]),
            (6, [6, 3, 5]), (4, [4, 4, 4])]
    for width, keep in plan:
        block = torch.stack([seqs[b, int(lengths[b]) : int(lengths[b]) + width] for b in range(3)])
        junk = torch.randint(0, model.cfg.vocab_size, block.shape, generator=g)  # the rejected part differs
        keep_t = torch.tensor(keep)
        block = torch.where(torch.arange(width) < keep_t[:, None], block, junk)
        out = model(block, caches)  # (3, width, V)
        assert caches[0].length == int(lengths.max()) + width
        for b in range(3):
            k = keep[b]
            torch.testing.assert_close(out[b, :k], full[b, int(lengths[b]) : int(lengths[b]) + k], atol=ATOL, rtol=RTOL)
        lengths = lengths + keep_t
        for c in caches:
            c.truncate(lengths)
        assert caches[0].lengths.tolist() == lengths.tolist() and caches[0].length == int(lengths.max())


def test_per_row_forward_builds_one_row_step_for_all_layers(monkeypatch):
    """The trunk builds the per-row mask and write positions once per forward and every layer's cache ends
    holding the same lengths tensor; the step equals the literal definition."""
    from foresight.model import layers

    model = _model(seed=3, n_layers=3)
    caches = model.new_caches()
    model(torch.randint(0, model.cfg.vocab_size, (2, 4)), caches)
    for c in caches:
        c.truncate(torch.tensor([4, 2]))  # one tensor for every layer, as the decoder does
    built = []
    real = layers.row_step
    monkeypatch.setattr(layers, "row_step", lambda *a: built.append(a) or real(*a))
    model(torch.randint(0, model.cfg.vocab_size, (2, 3)), caches)
    assert len(built) == 1 and all(c.lengths is caches[0].lengths for c in caches)
    assert caches[0].lengths.tolist() == [7, 5] and caches[0].length == 7
    step = real(torch.tensor([4, 2]), 3, 7)
    want = torch.tensor([[[j <= p + i for j in range(7)] for i in range(3)] for p in (4, 2)])[:, None]  # (B, 1, T, S)
    assert torch.equal(step.mask, want) and step.index.tolist() == [[4, 5, 6], [2, 3, 4]]


def test_kv_cache_per_row_grows_past_its_capacity():
    # Rows written at their own positions across the initial capacity (64): each row's first lengths[b] keys
    # equal its own concatenation; a scalar truncate cuts every row; never-written slots are zeros.
    torch.manual_seed(1)
    cache = KVCache()
    cache.truncate(torch.tensor([0, 0]))
    rows: list[list[torch.Tensor]] = [[], []]
    for step in range(40):
        k = torch.randn(2, 3, 3, 4)
        cache.append(k, k + 1)
        keep = [3, 1 + step % 3]
        for b in range(2):
            rows[b].append(k[b, :, : keep[b]])
        cache.truncate(torch.tensor([sum(r.shape[1] for r in rows[b]) for b in range(2)]))
    assert cache.lengths.tolist() == [120, 79] and cache.length == 120 and cache.k.shape == (2, 3, 120, 4)
    for b in range(2):
        want = torch.cat(rows[b], dim=1)
        got_k, got_v = cache.k[b, :, : want.shape[1]], cache.v[b, :, : want.shape[1]]
        assert torch.equal(got_k, want) and torch.equal(got_v, want + 1)
    assert torch.isfinite(cache.k).all() and torch.isfinite(cache.v).all()
    cache.truncate(100)
    assert cache.lengths.tolist() == [100, 79] and cache.length == 100 and cache.offset is cache.lengths
    # A row leaving the batch: the other keeps its keys, and the views shrink to its length.
    want = torch.cat(rows[1], dim=1)
    cache.keep_rows(torch.tensor([1]))
    assert cache.lengths.tolist() == [79] and cache.length == 79 and torch.equal(cache.k[0], want)


def test_kv_cache_keep_rows_on_the_scalar_path():
    cache = KVCache()
    k = torch.randn(3, 2, 5, 4)
    cache.append(k, -k)
    cache.keep_rows(torch.tensor([2, 0]))
    assert cache.lengths is None and cache.length == 5
    assert torch.equal(cache.k, k[[2, 0]]) and torch.equal(cache.v, -k[[2, 0]])
    KVCache().keep_rows(torch.tensor([0]))  # empty: nothing to do


# ---------------------------------------------------------------------------------------------------------
# Parameter count, tying, meta device


def _expected_params(cfg: ModelConfig, tied: bool, bias: bool) -> int:
    v, d, i, n_layers = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.n_layers
    kv = cfg.n_kv_heads * cfg.head_dim
    per_layer = d * d + 2 * d * kv + d * d  # q, k, v, o
    per_layer += (d + 2 * kv) if bias else 0
    per_layer += 3 * d * i  # gate, up, down
    per_layer += 2 * d  # two RMSNorms
    return v * d + n_layers * per_layer + d + (0 if tied else v * d)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_num_parameters_matches_hand_formula(tied, bias):
    cfg = _cfg(n_layers=3, tie_embeddings=tied, qkv_bias=bias)
    model = Transformer(cfg)
    expected = _expected_params(cfg, tied, bias)
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - cfg.vocab_size * cfg.hidden_size
    # Concretely, for the untied, bias-free case: 37*36 + 3*(2*1296 + 2*36*12 + 3*36*52 + 72) + 36 + 37*36.
    if not tied and not bias:
        assert expected == 1332 + 3 * (2592 + 864 + 5616 + 72) + 36 + 1332


def test_tie_embeddings_shares_the_weight():
    model = Transformer(_cfg(tie_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight
    model.reset_parameters()
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = Transformer(_cfg(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_init_follows_config():
    torch.manual_seed(0)
    cfg = _cfg(hidden_size=64, n_heads=4, n_kv_heads=2, vocab_size=300, qkv_bias=True, init_std=0.05)
    model = Transformer(cfg)
    assert abs(model.embed_tokens.weight.std().item() - 0.05) < 0.005
    assert abs(model.layers[0].mlp.up_proj.weight.std().item() - 0.05) < 0.005
    assert torch.all(model.layers[0].self_attn.q_proj.bias == 0)
    assert torch.all(model.norm.weight == 1) and torch.all(model.layers[1].input_layernorm.weight == 1)


@pytest.mark.parametrize("tied", [False, True])
def test_meta_device_build_does_not_allocate(tied):
    cfg = _cfg(n_layers=3, tie_embeddings=tied, qkv_bias=True)
    with torch.device("meta"):
        meta = Transformer(cfg)
    assert all(p.is_meta for p in meta.parameters())
    assert meta.num_parameters() == Transformer(cfg).num_parameters() == _expected_params(cfg, tied, True)
    if tied:
        assert meta.lm_head.weight is meta.embed_tokens.weight


@pytest.mark.parametrize("tied", [False, True])
def test_meta_model_materializes_and_runs(tied):
    cfg = _cfg(tie_embeddings=tied)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")  # (to_empty unties shared parameters, as it does for any nn.Module)
    model.reset_parameters()  # ... and reset_parameters ties them again
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied
    assert model.num_parameters() == _expected_params(cfg, tied, False)
    ids = torch.randint(0, cfg.vocab_size, (2, 5))
    out = model(ids)  # RoPE tables built on meta are rebuilt on the input's device
    assert out.shape == (2, 5, cfg.vocab_size) and out.device.type == "cpu" and torch.isfinite(out).all()


def test_llama3_frequencies_follow_the_three_bands():
    # Written out per frequency from the Llama 3.1 definition: keep short wavelengths, divide long ones by the
    # factor, blend linearly in original/wavelength in between.
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    got = llama3_inv_freq(inv, scaling)
    bands = set()
    for f, g in zip(inv.tolist(), got.tolist()):
        wavelength = 2 * math.pi / f
        if wavelength < 64 / 4:
            want, band = f, "kept"
        elif wavelength > 64 / 1:
            want, band = f / 8, "scaled"
        else:
            s = (64 / wavelength - 1) / (4 - 1)
            want, band = (1 - s) * f / 8 + s * f, "blended"
        bands.add(band)
        assert g == pytest.approx(want, rel=1e-6)
    assert bands == {"kept", "blended", "scaled"}
