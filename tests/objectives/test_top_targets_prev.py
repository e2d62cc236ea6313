"""``top_targets`` (previous-occurrence index) and ``top_targets_rows`` against the per-row sort they replaced.

The reference below is the sort-based construction the library used before (issue 13), written out here: each
row sorts its K slots stably so that the first of each group of equal ids is its earliest offset.
"""

from __future__ import annotations

import pytest
import torch

from foresight.objectives.top import MAX_SLOTS, previous_occurrence, top_targets, top_targets_rows


def sorted_reference(tokens, seq_len, window, ignore_index=-100, scores="exact", horizon=None):
    b, length = tokens.shape
    k = min(window, MAX_SLOTS)
    scorable_stream = (tokens >= 0) & (tokens != ignore_index)
    positions = torch.arange(length)
    candidates = torch.where(scorable_stream, positions, torch.full_like(positions, length))
    start = candidates.flip(-1).cummin(-1).values.flip(-1)[:, 1 : seq_len + 1] - (torch.arange(seq_len) + 1)
    offsets = start[..., None] + torch.arange(k)
    index = (torch.arange(seq_len) + 1)[None, :, None] + offsets
    in_window = (offsets < window) & (index < length)
    gathered = tokens.gather(1, index.clamp(max=length - 1).reshape(b, -1)).reshape(b, seq_len, k)
    upcoming = torch.where(in_window, gathered, torch.full_like(gathered, -1))
    scorable = (upcoming >= 0) & (upcoming != ignore_index)
    if horizon is not None:
        scorable &= offsets <= horizon[..., None]
    slot = torch.arange(k)
    keys = torch.where(scorable, upcoming, -1 - slot)
    sorted_keys, order = torch.sort(keys, dim=-1, stable=True)
    first_sorted = torch.ones_like(sorted_keys, dtype=torch.bool)
    first_sorted[..., 1:] = sorted_keys[..., 1:] != sorted_keys[..., :-1]
    scored = torch.empty_like(first_sorted).scatter_(-1, order, first_sorted) & scorable
    score = -offsets.float() if scores == "exact" else (window - offsets).to(torch.float16).float()
    weights = torch.softmax(score.masked_fill(~scored, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.where(scored, upcoming, torch.zeros_like(upcoming)), weights


def _tokens(b, length, vocab, seed, ignore=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (b, length), generator=g)
    if ignore:  # some ignored and some negative ids, in runs
        tokens[torch.rand(b, length, generator=g) < 0.15] = -100
        tokens[torch.rand(b, length, generator=g) < 0.05] = -1
    return tokens


def test_previous_occurrence_literal():
    tokens = torch.tensor([[3, 1, 3, 3, 2, 1], [0, 0, 0, 5, 0, 5]])
    want = torch.tensor([[-1, -1, 0, 2, -1, 1], [-1, 0, 1, -1, 2, 3]])
    assert torch.equal(previous_occurrence(tokens), want)


@pytest.mark.parametrize("window", [1, 3, 7, 40, 200])
@pytest.mark.parametrize("scores", ["exact", "paper"])
@pytest.mark.parametrize("vocab", [3, 11])
@pytest.mark.parametrize("with_horizon", [False, True])
def test_top_targets_equal_sorted_reference(window, scores, vocab, with_horizon):
    b, seq_len, length = 3, 23, 23 + 9
    tokens = _tokens(b, length, vocab, seed=window + vocab)
    horizon = None
    if with_horizon:
        horizon = torch.randint(0, 12, (b, seq_len), generator=torch.Generator().manual_seed(5))
    ids, w = top_targets(tokens, seq_len, window, scores=scores, horizon=horizon, impl="torch")
    ids_ref, w_ref = sorted_reference(tokens, seq_len, window, scores=scores, horizon=horizon)
    assert torch.equal(ids, ids_ref)
    assert torch.equal(w, w_ref)


@pytest.mark.parametrize("window", [2, 5, 4096])
@pytest.mark.parametrize("with_horizon", [False, True])
def test_top_targets_rows_equal_full_targets(window, with_horizon):
    b, seq_len, length = 5, 17, 17 + 4
    tokens = _tokens(b, length, 7, seed=3)
    g = torch.Generator().manual_seed(9)
    rows = torch.rand(b, seq_len, generator=g) < 0.4
    horizon = torch.randint(0, 9, (b, seq_len), generator=g) if with_horizon else None
    ids, w = top_targets_rows(tokens, rows, window, horizon=horizon)
    ids_full, w_full = top_targets(tokens, seq_len, window, horizon=horizon, impl="torch")
    k = min(window, MAX_SLOTS, length - 1)
    assert ids.shape == (int(rows.sum()), k)
    assert torch.equal(ids, ids_full[rows][:, :k])
    assert torch.equal(w, w_full[rows][:, :k])
    assert not w_full[rows][:, k:].any()  # the dropped slots never carry weight


def test_top_targets_rows_star_graph_answer():
    # The star-graph target at '=' (spec: weights ∝ e^(−k) over the path, in order), here l = 4.
    eq, path = 99, [5, 8, 2, 7]
    tokens = torch.tensor([[1, 2, eq, *path]])
    rows = torch.zeros(1, 5, dtype=torch.bool)
    rows[0, 2] = True  # the position of '=', which predicts the source
    ids, w = top_targets_rows(tokens, rows, 4096)
    assert ids[0, :4].tolist() == path
    want = torch.softmax(-torch.arange(4.0), dim=0)
    torch.testing.assert_close(w[0, :4], want)
