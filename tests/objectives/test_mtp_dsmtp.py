"""MTP (Meta MTP §2) and DS-MTP (DeepSeek-V3 §2.2) against references written here from the definitions.

The references run the model's own modules by hand (embedding, blocks, norms, head) and sum a per-position
cross-entropy over the labels that exist, so only the objectives' wiring is under test: which hidden state
feeds which head, which token is embedded, which label is predicted, the concatenation order, the norms and
the reduction.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foresight.batch import Batch
from foresight.model import ModelConfig, Transformer
from foresight.model.layers import RMSNorm
from foresight.objectives import DSMTP, MTP, NTP, DSMTPConfig, MTPConfig, NTPConfig

B, T, V = 3, 11, 37


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_norms(module, seed):
    """RMSNorm weights start at 1, which would hide a swapped or doubled norm (RMSNorm(RMSNorm(x)) = RMSNorm(x)
    at unit weights): give every norm weight its own random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, RMSNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
    return module


def small_model(seed=0, n_layers=3):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, hidden_size=24, n_layers=n_layers, n_heads=4, n_kv_heads=2, init_std=0.2)
    return cfg, randomize_norms(Transformer(cfg), seed)


def make_batch(length, masked, seed=1, ignore_tail=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, length), generator=g)
    if ignore_tail:
        tokens[1, -1] = -100  # an ignored label at the very end of the stream (never an input)
    mask = (torch.rand(B, T, generator=g) < 0.6) if masked else None
    return Batch(tokens, T, mask)


def ce_sum(logits, batch, offset):
    """sum over positions t (not masked) whose label x[t+1+offset] exists and is not ignored, of CE."""
    tokens, length = batch.tokens, batch.tokens.shape[1]
    total = logits.new_zeros(())
    for b in range(B):
        for t in range(T):
            j = t + 1 + offset
            if j >= length or tokens[b, j] < 0 or (batch.loss_mask is not None and not batch.loss_mask[b, t]):
                continue
            total = total + F.cross_entropy(logits[b, t], tokens[b, j])
    return total


def ref_count(batch):
    tokens, length = batch.tokens, batch.tokens.shape[1]
    n = 0
    for b in range(B):
        for t in range(T):
            if t + 1 < length and tokens[b, t + 1] >= 0 and (batch.loss_mask is None or batch.loss_mask[b, t]):
                n += 1
    return n


def ref_trunk(model, batch):
    """(input of the last block, output of the last block, cos, sin): the model's blocks run by hand."""
    ids = batch.tokens[:, :T]
    cos, sin = model.rotary(T, ids.device)
    x = model.embed_tokens(ids)
    for layer in model.layers[:-1]:
        x = layer(x, cos, sin)
    return x, model.layers[-1](x, cos, sin), cos, sin


def check_grads(loss, ref, params, rtol=1e-5):
    """Gradients of ``loss`` equal those of ``ref`` (fp32: atol scaled to the gradient's magnitude, since the
    loss is a sum over ~30 positions), and none is zero."""
    params = list(params)
    got = torch.autograd.grad(loss, params, retain_graph=True)
    want = torch.autograd.grad(ref, params, retain_graph=True)
    for p, a, b in zip(params, got, want):
        assert a.abs().sum() > 0, f"no gradient reaches a parameter of shape {tuple(p.shape)}"
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-5 * float(b.abs().max()))


# ------------------------------------------------------------------------------------------------------ MTP


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("extra", [1, 4, 7])  # tokens has T + extra columns; extra = 1: deeper heads lose labels
@pytest.mark.parametrize("masked", [False, True])
def test_mtp_matches_reference(n, extra, masked):
    cfg, model = small_model()
    obj = randomize_norms(MTP(MTPConfig(n=n), cfg), 10)
    assert obj.lookahead == n and len(obj.heads) == n - 1
    batch = make_batch(T + extra, masked)
    if extra > 2:
        batch.tokens[0, T + 1] = -100  # an ignored label inside the look-ahead

    out = model.trunk(batch.input_ids)
    res = obj(out, batch, model)

    last_input, final, cos, sin = ref_trunk(model, batch)
    heads = [model.layers[-1]] + list(obj.heads)  # head 0 is the model's own last block
    per_head = [ce_sum(model.lm_head(model.norm(head(last_input, cos, sin))), batch, k) for k, head in enumerate(heads)]
    ref = sum(per_head[1:])
    count = ref_count(batch)

    assert int(res.count) == count and int(obj.count(batch)) == count
    torch.testing.assert_close(res.loss_sum, ref, rtol=1e-5, atol=1e-5)
    for k in range(1, n):
        torch.testing.assert_close(res.metrics[f"mtp_head{k}"], per_head[k].detach() / count, rtol=1e-5, atol=1e-6)

    # [ntp, mtp(n)] is the paper's MTP-n: the sum of the n heads' cross-entropies.
    ntp = NTP(NTPConfig())(out, batch, model)
    torch.testing.assert_close(ntp.loss_sum + res.loss_sum, sum(per_head), rtol=1e-5, atol=1e-5)

    # Gradients: every head parameter gets one, equal to the reference's; shared parts too.
    check_grads(res.loss_sum, ref, obj.parameters())
    check_grads(res.loss_sum, ref, [model.lm_head.weight, model.norm.weight, model.embed_tokens.weight,
                                    *model.layers[0].parameters()])
    # The model's last block is head 0 only: heads 1..n-1 branch off before it, so no gradient reaches it.
    res2 = obj(model.trunk(batch.input_ids), batch, model)
    g = torch.autograd.grad(res2.loss_sum, list(model.layers[-1].parameters()), allow_unused=True)
    assert all(x is None or torch.all(x == 0) for x in g)


def test_mtp_exact_length_deeper_heads_lose_labels():
    """With exactly T + 1 columns, head k has labels only at t <= T - 2 - k."""
    cfg, model = small_model()
    obj = randomize_norms(MTP(MTPConfig(n=4), cfg), 11)
    batch = make_batch(T + 1, masked=False, ignore_tail=False)
    out = model.trunk(batch.input_ids)
    res = obj(out, batch, model)
    last_input, _, cos, sin = ref_trunk(model, batch)
    ref = 0.0
    for k, head in enumerate(obj.heads, start=1):
        logits = model.lm_head(model.norm(head(last_input, cos, sin)))  # (B, T, V)
        n_valid = T - k
        ref = ref + F.cross_entropy(logits[:, :n_valid].reshape(-1, V), batch.tokens[:, 1 + k :].reshape(-1),
                                    reduction="sum")
    torch.testing.assert_close(res.loss_sum, ref, rtol=1e-5, atol=1e-5)
    assert int(res.count) == B * T  # normalised by the next-token count, not T - k


# --------------------------------------------------------------------------------------------------- DS-MTP


def ref_dsmtp(model, obj: DSMTP, batch):
    c = obj.cfg
    _, final, cos, sin = ref_trunk(model, batch)
    h = model.norm(final) if c.h0 == "post_norm" else final
    tokens, length = batch.tokens, batch.tokens.shape[1]
    total, per_depth = 0.0, []
    for k in range(1, c.depth + 1):
        mod = obj.layers[k - 1]
        # x[t+k] for every position; positions whose x[t+k] does not exist (or is ignored) have no label at
        # depth k and, causally, cannot influence any position that has one: any id will do there.
        ids = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            for t in range(T):
                if t + k < length and tokens[b, t + k] >= 0:
                    ids[b, t] = tokens[b, t + k]
        hn, en = mod.hnorm(h), mod.enorm(model.embed_tokens(ids))
        joined = torch.cat([hn, en] if c.concat == "hidden_first" else [en, hn], dim=-1)
        h = mod.block(mod.eh_proj(joined), cos, sin)
        if c.final_norm == "own":
            assert mod.norm is not None
            normed = mod.norm(h)
        else:
            assert mod.norm is None
            normed = model.norm(h)
        per_depth.append(ce_sum(model.lm_head(normed), batch, k))
        total = total + per_depth[-1]
    if c.reduce == "mean":
        total = total / c.depth
    return total, per_depth


DSMTP_CONFIGS = [
    dict(preset="top_paper"),
    dict(preset="deepseek_v3"),
    dict(preset="deepseek_v3", depth=3),
    dict(preset="top_paper", depth=2, concat="embed_first", h0="post_norm", proj_bias=False, reduce="mean",
         final_norm="own"),
    dict(preset="deepseek_v3", depth=2, concat="hidden_first", h0="pre_norm", proj_bias=True, reduce="sum",
         final_norm="shared"),
]


def test_dsmtp_presets():
    a = DSMTPConfig(preset="top_paper")
    assert (a.depth, a.concat, a.h0, a.proj_bias, a.reduce, a.final_norm, a.weight) == (
        3, "hidden_first", "pre_norm", True, "sum", "shared", 1.0)
    b = DSMTPConfig(preset="deepseek_v3")
    assert (b.depth, b.concat, b.h0, b.proj_bias, b.reduce, b.final_norm) == (
        1, "embed_first", "post_norm", False, "mean", "own")


@pytest.mark.parametrize("conf", DSMTP_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("extra", [1, 3, 6])
@pytest.mark.parametrize("masked", [False, True])
def test_dsmtp_matches_reference(conf, extra, masked):
    cfg, model = small_model(seed=2)
    obj = randomize_norms(DSMTP(DSMTPConfig(**conf), cfg), 12)
    assert obj.lookahead == obj.cfg.depth + 1
    for mod in obj.layers:
        assert (mod.eh_proj.bias is not None) == obj.cfg.proj_bias
        assert mod.eh_proj.in_features == 2 * cfg.hidden_size and mod.eh_proj.out_features == cfg.hidden_size
        if mod.eh_proj.bias is not None:  # make the bias matter in the comparison
            with torch.no_grad():
                mod.eh_proj.bias.normal_(std=0.5)
    batch = make_batch(T + extra, masked, seed=3)

    res = obj(model.trunk(batch.input_ids), batch, model)
    ref, per_depth = ref_dsmtp(model, obj, batch)
    count = ref_count(batch)

    assert int(res.count) == count and int(obj.count(batch)) == count
    torch.testing.assert_close(res.loss_sum, ref, rtol=1e-5, atol=1e-5)
    for k in range(1, obj.cfg.depth + 1):
        torch.testing.assert_close(res.metrics[f"dsmtp_depth{k}"], per_depth[k - 1].detach() / count,
                                   rtol=1e-5, atol=1e-6)
    check_grads(res.loss_sum, ref, obj.parameters())
    check_grads(res.loss_sum, ref, [model.lm_head.weight, model.embed_tokens.weight, *model.layers[-1].parameters()])
    if obj.cfg.final_norm == "shared" or obj.cfg.h0 == "post_norm":
        check_grads(res.loss_sum, ref, [model.norm.weight])


@pytest.mark.parametrize("conf", [dict(preset="top_paper"), dict(preset="deepseek_v3", depth=2)])
def test_dsmtp_variants_really_differ(conf):
    """Each option changes the loss (so the reference comparison above can tell them apart)."""
    cfg, model = small_model(seed=4)
    batch = make_batch(T + 4, masked=False, seed=5)
    out = model.trunk(batch.input_ids)
    base = randomize_norms(DSMTP(DSMTPConfig(**conf), cfg), 13)
    state = base.state_dict()
    ref = base(out, batch, model).loss_sum
    flips = {"concat": ("hidden_first", "embed_first"), "h0": ("pre_norm", "post_norm"),
             "reduce": ("sum", "mean")}
    for key, (a, b) in flips.items():
        other = DSMTP(DSMTPConfig(**{**conf, key: b if getattr(base.cfg, key) == a else a}), cfg)
        other.load_state_dict(state)
        assert not torch.allclose(other(out, batch, model).loss_sum, ref, rtol=1e-4), key
    # own vs shared final norm: same weights everywhere else, own norms randomised differently from model.norm
    flipped = "shared" if base.cfg.final_norm == "own" else "own"
    other = randomize_norms(DSMTP(DSMTPConfig(**{**conf, "final_norm": flipped}), cfg), 15)
    other.load_state_dict(state, strict=False)
    assert not torch.allclose(other(out, batch, model).loss_sum, ref, rtol=1e-4), "final_norm"


def test_dsmtp_exact_length_deeper_modules_lose_labels():
    cfg, model = small_model(seed=6)
    obj = randomize_norms(DSMTP(DSMTPConfig(preset="top_paper", depth=3), cfg), 14)
    batch = make_batch(T + 1, masked=False, seed=7, ignore_tail=False)
    res = obj(model.trunk(batch.input_ids), batch, model)
    ref, per_depth = ref_dsmtp(model, obj, batch)
    torch.testing.assert_close(res.loss_sum, ref, rtol=1e-5, atol=1e-5)
    assert int(res.count) == B * T
    # depth k has T - 1 - k labelled positions per row: losses shrink with depth roughly in that proportion
    assert all(p.item() > 0 for p in per_depth)
