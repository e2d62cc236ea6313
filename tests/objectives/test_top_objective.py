"""TOP (token order prediction) against the literal dense definition (TOP paper §3; docs/objectives.md).

Dense reference, written here with loops: for position t, every distinct scored id v among the W upcoming
tokens x[t+1 .. t+W] (not ignore_index, not negative) gets score -d (d = offset of its first occurrence) or,
in "paper" mode, float(half(W - d)); every other id scores -inf. Target = softmax over the whole vocabulary;
row loss = -sum_v target_v · log_softmax(h W^T)_v.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model import ModelConfig, Transformer
from foresight.objectives import TOP, TOPConfig, top_loss, top_targets
from foresight.objectives.top import top_has_target

B, T, D = 3, 11, 13


@functools.lru_cache(maxsize=None)
def paper_score(window: int, d: int) -> float:
    return torch.tensor(float(window - d), dtype=torch.float64).to(torch.float16).item()


def dense_scores(tokens, seq_len, window, vocab, *, ignore_index=-100, scores="exact", horizon=None):
    """(B, T, V) fp64 scores, -inf where an id is not among the scored upcoming tokens; and per-row d_min.
    ``horizon`` (B, T): offsets d > horizon[b, t] never score."""
    b_, length = tokens.shape
    out = torch.full((b_, seq_len, vocab), -math.inf, dtype=torch.float64)
    d_min = torch.full((b_, seq_len), -1, dtype=torch.long)
    rows = tokens.tolist()
    for b in range(b_):
        for t in range(seq_len):
            seen = set()
            for d, v in enumerate(rows[b][t + 1 : min(t + 1 + window, length)]):
                if v < 0 or v == ignore_index or v in seen or (horizon is not None and d > horizon[b, t]):
                    continue
                seen.add(v)
                out[b, t, v] = -float(d) if scores == "exact" else paper_score(window, d)
                if d_min[b, t] < 0:
                    d_min[b, t] = d
    return out, d_min


def dense_target(tokens, seq_len, window, vocab, **kw):
    """(B, T, V) target distribution (rows without a scored id are all 0), has_target (B, T), d_min (B, T)."""
    score, d_min = dense_scores(tokens, seq_len, window, vocab, **kw)
    has = torch.isfinite(score).any(-1)
    target = torch.softmax(score, dim=-1).nan_to_num(0.0)
    return target, has, d_min


def dense_top_loss(hidden, weight, tokens, window, *, ignore_index=-100, scores="exact", normalize="valid"):
    b, t, _ = hidden.shape
    target, has, _ = dense_target(tokens, t, window, weight.shape[0], ignore_index=ignore_index, scores=scores)
    logp = torch.log_softmax(hidden.double() @ weight.double().T, dim=-1)  # (B, T, V)
    rows = -(target * logp).sum(-1)  # (B, T)
    total = rows[has].sum()
    count = has.sum() if normalize == "valid" else b * t
    return total / max(int(count), 1)


def make_tokens(seed, length, vocab, *, ignore_index=-100, sprinkle=True):
    """Random ids in [0, vocab) (small vocab: repeats inside windows), with some ignore_index and negative ids,
    and one row whose tail is entirely ignored (its last positions have no target)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, length), generator=g)
    if sprinkle:
        r = torch.rand(B, length, generator=g)
        tokens[r < 0.12] = ignore_index
        tokens[(r >= 0.12) & (r < 0.2)] = -1
        tokens[1, 3] = -7
        tokens[2, T - 3 :] = ignore_index
        tokens[:, :T] = tokens[:, :T].clamp(min=0)  # inputs themselves stay valid ids (not needed by top_loss)
    return tokens


def make_hidden(seed, vocab, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    weight = torch.randn(vocab, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    return hidden, weight


# ------------------------------------------------------------------------------------------------- targets


@pytest.mark.parametrize("window", [1, 2, 7, 4096])
@pytest.mark.parametrize("scores", ["exact", "paper"])
@pytest.mark.parametrize("extra", [1, 6, 300])  # L = T + extra
@pytest.mark.parametrize("vocab", [5, 37])
def test_top_targets_match_dense_target(window, scores, extra, vocab):
    tokens = make_tokens(window + extra + vocab, T + extra, vocab)
    ids, w = top_targets(tokens, T, window, scores=scores)
    k = min(window, 128)
    assert ids.shape == w.shape == (B, T, k) and w.dtype == torch.float32 and ids.dtype == torch.long

    target, has, d_min = dense_target(tokens, T, window, vocab, scores=scores)
    assert has.any() and not has.all()  # both kinds of rows are exercised
    assert int(d_min.max()) <= 24  # the regime in which the sparse form is exact (see module docstring)

    # Scatter the sparse (ids, weights) back to (B, T, V): it must be the dense target.
    sparse_dense = torch.zeros(B, T, vocab, dtype=torch.float64).scatter_add_(-1, ids, w.double())
    torch.testing.assert_close(sparse_dense, target, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w.double().sum(-1), has.double(), rtol=0, atol=1e-6)
    assert torch.equal((w > 0).any(-1), has)
    assert torch.equal(top_has_target(tokens, T, window), has)  # the trainer's O(L) count
    # Every id with positive weight appears once in its row and is a scored id; every id with non-negligible
    # dense weight is there (ids past d_min + ~104 underflow to weight 0 in fp32, as the reference doc says).
    for b in range(B):
        for t in range(T):
            live = ids[b, t][w[b, t] > 0].tolist()
            assert len(live) == len(set(live))
            assert set(live) <= set(torch.nonzero(target[b, t] > 0).flatten().tolist())
            assert set(live) >= set(torch.nonzero(target[b, t] > 1e-40).flatten().tolist())


@pytest.mark.parametrize("scores", ["exact", "paper"])
def test_top_targets_horizon_counts_offsets(scores):
    """``horizon`` limits the offset d from t + 1, also where the K slots start later (after ignored ids)."""
    vocab, window = 37, 4096
    tokens = make_tokens(40, T + 200, vocab)
    tokens[0, 1:60] = -100  # positions 0.. of row 0 start their slots past offset 50
    horizon = torch.randint(0, 80, (B, T), generator=torch.Generator().manual_seed(1))
    horizon[0, :4] = 70
    ids, w = top_targets(tokens, T, window, scores=scores, horizon=horizon)
    score, _ = dense_scores(tokens, T, window, vocab, scores=scores, horizon=horizon)
    target = torch.softmax(score, dim=-1).nan_to_num(0.0)
    sparse_dense = torch.zeros(B, T, vocab, dtype=torch.float64).scatter_add_(-1, ids, w.double())
    torch.testing.assert_close(sparse_dense, target, rtol=1e-6, atol=1e-7)
    assert 0 < int((w[0, :4] > 0).sum(-1).max()) <= 15  # offsets 59 - t .. 70 only, not 71 slots
    has = (w > 0).any(-1)
    assert has.any() and not has.all()
    assert torch.equal(top_has_target(tokens, T, window, horizon=horizon), has)


def test_top_targets_slot_layout():
    """Slot j holds the token at offset j if it is the first occurrence of a scored id."""
    tokens = torch.tensor([[9, 4, 4, -100, 2, 4, -3, 7, 2, 1]])
    ids, w = top_targets(tokens, 1, 8)
    assert ids[0, 0].tolist() == [4, 0, 0, 2, 0, 0, 7, 0]
    e = torch.tensor([1.0, math.exp(-3), math.exp(-6)])
    expected = torch.zeros(8)
    expected[[0, 3, 6]] = (e / e.sum()).float()
    torch.testing.assert_close(w[0, 0], expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("window", [1, 7, 128, 129, 4096])
def test_top_targets_k_slots(window):
    tokens = torch.randint(0, 50, (2, 20))
    ids, w = top_targets(tokens, 9, window)
    assert ids.shape == w.shape == (2, 9, min(window, 128))


def test_paper_scores_tie_at_window_4096():
    """Distinct upcoming tokens, W = 4096: fp16 rounding of W - d makes d = 0 and d = 1 tie
    (0.456/0.456/0.062/0.008), while exact scores give 0.632/0.233/0.086/0.032."""
    tokens = torch.randperm(300, generator=torch.Generator().manual_seed(0))[None]  # (1, 300), all distinct
    _, w = top_targets(tokens, 1, 4096, scores="paper")
    assert w[0, 0, 0] == w[0, 0, 1]
    torch.testing.assert_close(w[0, 0, :4], torch.tensor([0.456, 0.456, 0.062, 0.008]), rtol=0, atol=1e-3)
    _, w = top_targets(tokens, 1, 4096, scores="exact")
    torch.testing.assert_close(w[0, 0, :4], torch.tensor([0.632, 0.233, 0.086, 0.032]), rtol=0, atol=1e-3)
    # At a small window the fp16 rounding is exact: both modes agree.
    w_exact = top_targets(tokens, 1, 7, scores="exact")[1]
    w_paper = top_targets(tokens, 1, 7, scores="paper")[1]
    torch.testing.assert_close(w_exact, w_paper, rtol=1e-6, atol=0)


def test_window_fully_ignored_row_has_zero_weights():
    tokens = torch.tensor([[3, 1, -100, -100, -1, -100, 5, 2]])
    ids, w = top_targets(tokens, 4, 3)
    assert w[0, 0].sum() == pytest.approx(1.0) and (w[0, 0] > 0).sum() == 1  # [1, -100, -100]
    assert torch.all(w[0, 1] == 0)  # [-100, -100, -1]
    assert torch.all(w[0, 2] == 0)  # [-100, -1, -100]
    assert w[0, 3].sum() == 1.0 and ids[0, 3][w[0, 3] > 0].tolist() == [5]  # [-1, -100, 5]
    # custom ignore_index: a pad id that is a real vocabulary entry never scores
    ids, w = top_targets(torch.tensor([[0, 2, 2, 2, 4]]), 1, 3, ignore_index=2)
    assert torch.all(w[0, 0] == 0)


def test_top_targets_errors():
    tokens = torch.randint(0, 9, (2, 12))
    with pytest.raises(ForesightError):
        top_targets(tokens, 11, 0)
    with pytest.raises(ForesightError):
        top_targets(tokens, 11, 4, scores="fp16")
    with pytest.raises(ValueError):
        top_targets(tokens, 12, 4)  # needs seq_len + 1 columns
    h, w = torch.randn(2, 11, 5), torch.randn(9, 5)
    with pytest.raises(ForesightError):
        top_loss(h, w, tokens, 4, normalize="mean")


# ---------------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("window", [1, 2, 7, 4096])
@pytest.mark.parametrize("scores", ["exact", "paper"])
@pytest.mark.parametrize("normalize", ["valid", "paper"])
@pytest.mark.parametrize("extra", [1, 6, 300])
@pytest.mark.parametrize("vocab", [5, 37])
def test_top_loss_matches_dense(window, scores, normalize, extra, vocab):
    tokens = make_tokens(window + extra + vocab, T + extra, vocab)
    hidden, weight = make_hidden(window + extra, vocab)
    got = top_loss(hidden, weight, tokens, window, scores=scores, normalize=normalize)
    gh, gw = torch.autograd.grad(got, (hidden, weight))

    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref = dense_top_loss(h64, w64, tokens, window, scores=scores, normalize=normalize)
    rh, rw = torch.autograd.grad(ref, (h64, w64))

    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh.double(), rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-6)


def test_top_loss_custom_ignore_index():
    vocab, pad = 11, 2
    tokens = make_tokens(5, T + 9, vocab, sprinkle=False)
    tokens[0, 4:8] = pad
    tokens[2, T - 2 :] = pad
    hidden, weight = make_hidden(6, vocab)
    got = top_loss(hidden, weight, tokens, 7, ignore_index=pad)
    gh, gw = torch.autograd.grad(got, (hidden, weight))
    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref = dense_top_loss(h64, w64, tokens, 7, ignore_index=pad)
    rh, rw = torch.autograd.grad(ref, (h64, w64))
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh.double(), rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-6)
    # and it really differs from not ignoring the pad id
    assert not torch.allclose(got, top_loss(hidden, weight, tokens, 7), rtol=1e-3)


def test_window_one_is_next_token_cross_entropy():
    vocab = 37
    tokens = make_tokens(3, T + 4, vocab, sprinkle=False)
    tokens[0, 5] = -100
    tokens[2, T] = -100
    hidden, weight = make_hidden(4, vocab)
    got = top_loss(hidden, weight, tokens, 1)
    ref = F.cross_entropy((hidden @ weight.T).reshape(-1, vocab), tokens[:, 1 : T + 1].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g1 = torch.autograd.grad(got, (hidden, weight))
    g2 = torch.autograd.grad(ref, (hidden, weight))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_top_loss_no_target_anywhere():
    tokens = torch.full((B, T + 3), -100)
    tokens[:, 0] = 1  # every position looks at ignored ids only
    hidden, weight = make_hidden(0, 9)
    for normalize in ("valid", "paper"):
        loss = top_loss(hidden, weight, tokens, 3, normalize=normalize)
        gh, gw = torch.autograd.grad(loss, (hidden, weight))
        assert loss.item() == 0.0 and torch.all(gh == 0) and torch.all(gw == 0)


# ----------------------------------------------------------------- the sparse form's look-ahead limit (K = 128)


def _far_row(first_scored_offset: int, vocab: int = 400):
    """One position whose upcoming tokens are ignored up to ``first_scored_offset``, then distinct ids."""
    g = torch.Generator().manual_seed(first_scored_offset)
    length = 1 + first_scored_offset + 200
    tokens = torch.full((1, length), -100)
    tokens[0, 0] = 0
    tokens[0, 1 + first_scored_offset :] = torch.randperm(vocab, generator=g)[:200]
    return tokens


@pytest.mark.parametrize("first", [25, 30])
def test_sparse_target_when_nearest_scored_token_is_past_24(first):
    """A nearest scored token past offset 24: ids the sparse form leaves out have dense weight below
    exp(-(128 - first)), so sparse and dense agree to ~1e-42."""
    tokens = _far_row(first)
    ids, w = top_targets(tokens, 1, 4096)
    target, _, d_min = dense_target(tokens, 1, 4096, 400)
    assert int(d_min) == first
    sparse_dense = torch.zeros(1, 1, 400, dtype=torch.float64).scatter_add_(-1, ids, w.double())
    torch.testing.assert_close(sparse_dense, target, rtol=1e-6, atol=1e-7)
    dropped = target[sparse_dense == 0]  # ids the sparse form left out (beyond slot 128 or underflowed)
    assert dropped.max() < math.exp(-(128 - first)) * 1.01
    assert dropped.max() < 1e-42


@pytest.mark.parametrize("first", [120, 127, 150])
def test_sparse_target_when_nearest_scored_token_is_far(first):
    """The K slots start at the nearest scorable token, so a long run of ignored ids loses nothing."""
    tokens = _far_row(first)
    ids, w = top_targets(tokens, 1, 4096)
    target, has, _ = dense_target(tokens, 1, 4096, 400)
    assert bool(has)
    sparse_dense = torch.zeros(1, 1, 400, dtype=torch.float64).scatter_add_(-1, ids, w.double())
    torch.testing.assert_close(sparse_dense, target, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------- the TOP objective


def _model(vocab=37):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=16, n_layers=1, n_heads=2, init_std=0.3)
    return cfg, Transformer(cfg)


@pytest.mark.parametrize("normalize", ["valid", "paper"])
@pytest.mark.parametrize("masked", [False, True])
def test_top_objective_matches_dense(normalize, masked):
    vocab, window, extra = 37, 7, 5
    cfg, model = _model(vocab)
    obj = TOP(TOPConfig(window=window, normalize=normalize, scores="exact"), cfg)
    tokens = make_tokens(21, T + extra, vocab)
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(2)) < 0.6 if masked else None
    batch = Batch(tokens, T, mask)
    out = model.trunk(batch.input_ids)
    res = obj(out, batch, model)
    assert res.count.dtype == torch.long and res.count.dim() == 0
    assert torch.equal(res.count, obj.count(batch))

    target, has, _ = dense_target(tokens, T, window, vocab)
    rows = has if normalize == "valid" else torch.ones_like(has)
    if mask is not None:
        rows = rows & mask
    assert int(res.count) == int(rows.sum())
    w_head = obj.head.weight
    h = out.hidden
    logp = torch.log_softmax(h.double() @ w_head.double().T, dim=-1)
    per_row = -(target * logp).sum(-1)
    ref = per_row[rows & has].sum()
    torch.testing.assert_close(res.loss_sum.double(), ref, rtol=1e-5, atol=1e-5)

    g_got = torch.autograd.grad(res.loss_sum, (w_head, h), retain_graph=True)
    g_ref = torch.autograd.grad(ref, (w_head, h))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)
    if normalize == "valid" and not masked:
        torch.testing.assert_close(res.loss_sum / res.count, top_loss(h, w_head, tokens, window), rtol=1e-6, atol=1e-7)
