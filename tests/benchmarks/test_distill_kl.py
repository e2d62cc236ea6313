"""Self-distillation loss for drafting heads (benchmarks/cached_heads.py ``kl_head_losses``): KL(trunk || head)
over the draft vocabulary, the trunk's distribution for token t+1+k read at position t+k of the cache, checked
against a plain per-position loop on odd shapes; training on it raises the heads' agreement with the trunk."""

from __future__ import annotations

import math

import pytest
import torch
from cached_heads import (
    TrunkCache,
    cache_trunk,
    draft_accuracy,
    frequent_ids,
    init_from_last_block,
    kl_head_losses,
    train_heads,
)
from distill import greedy_with_states

from foresight.batch import Batch
from foresight.errors import ForesightError

from test_draft_vocab import DEEPSEEK, DSMTP2, MTP3, V, _lm, _reference_states

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain_kl(lm, key, tokens, vocab, first_target):
    """Per depth: sum over (row, position) of sum_v p(v) (log p(v) - log q(v)), written out one position at a time
    with math.log on floats; p = the trunk's softmax over ``vocab`` at position t+k, q = the head's at t."""
    model = lm.model
    t = tokens.shape[1] - 1
    with torch.no_grad():
        out = model.trunk(tokens[:, :t])
        states = _reference_states(lm, key, out, Batch(tokens, t))
    w = model.lm_head.weight[vocab]  # (V', D)
    sums, counts = [], []
    for k, (h, norm) in enumerate(states, start=1):
        total, count = 0.0, 0
        for b in range(tokens.shape[0]):
            first = first_target if isinstance(first_target, int) else int(first_target[b])
            for pos in range(t):
                if pos + k >= t or pos + 1 + k < first:  # no trunk state for token pos+1+k, or masked
                    continue
                p = torch.softmax(model.norm(out.final[b, pos + k]) @ w.T, -1).tolist()
                q = torch.softmax(norm(h[b, pos]) @ w.T, -1).tolist()
                total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
                count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


@pytest.mark.parametrize("specs", [MTP3, DSMTP2, DEEPSEEK], ids=["mtp", "dsmtp", "deepseek"])
@pytest.mark.parametrize("first", [0, 6, "rows"])
def test_kl_equals_a_plain_loop(specs, first):
    lm = _lm(specs, seed=21)
    key = specs[1]["name"]
    tokens = torch.randint(0, V, (3, 11), generator=torch.Generator().manual_seed(22))
    first_target = torch.tensor([0, 4, 9]) if first == "rows" else first
    vocab = torch.tensor([4, 0, 7, 9, 2, 11, 5, 20, 13])  # odd size, no order
    cache = cache_trunk(lm.model, tokens)
    cos, sin = lm.model.rotary(10, tokens.device)
    with torch.no_grad():
        sums, counts = kl_head_losses(lm, key, cache.rows(torch.arange(3), lm.model, cos, sin), Batch(tokens, 10),
                                      lm.model.lm_head.weight[vocab], first_target)
    ref_sums, ref_counts = _plain_kl(lm, key, tokens, vocab, first_target)
    assert [int(c) for c in counts] == ref_counts
    assert all(c > 0 for c in ref_counts)
    for s, r in zip(sums, ref_sums):
        assert r > 1e-3  # a real divergence: the test can fail
        torch.testing.assert_close(s, torch.tensor(r, dtype=s.dtype), rtol=1e-9, atol=1e-9)


def test_kl_is_zero_for_the_trunk_itself():
    """A head whose state equals the trunk's state one position later (an oracle) has KL exactly 0."""
    lm = _lm(MTP3, seed=3)
    tokens = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(4))
    cache = cache_trunk(lm.model, tokens)
    cos, sin = lm.model.rotary(8, tokens.device)
    out = cache.rows(torch.arange(2), lm.model, cos, sin)
    obj = lm.objectives["mtp"]
    shifted = torch.cat([out.final[:, 1:], out.final[:, :1]], dim=1)  # head 1 at t = trunk at t+1
    obj.head_states = lambda out_, batch_, model_: iter([(shifted, lm.model.norm)])
    with torch.no_grad():
        sums, counts = kl_head_losses(lm, "mtp", out, Batch(tokens, 8), lm.model.lm_head.weight[:11], 0)
    assert int(counts[0]) == 2 * 7
    assert abs(float(sums[0])) < 1e-12


@pytest.mark.parametrize("specs", [MTP3, DSMTP2], ids=["mtp", "dsmtp"])
def test_kl_training_learns_the_trunks_choices(specs):
    """On the trunk's own greedy continuations, KL training on every position (prompt ones too) raises the
    teacher-forced accuracy; the trunk is untouched."""
    lm = _lm(specs, seed=8, dtype=torch.float32)
    key = specs[1]["name"]
    init_from_last_block(lm, key)
    prompts = torch.randint(0, V, (24, 3), generator=torch.Generator().manual_seed(9))
    tokens, final, last_input = greedy_with_states(lm.model, prompts, 13)
    vocab = frequent_ids(tokens, 20, V)
    cache = TrunkCache(final, last_input)
    trunk0 = {k: v.clone() for k, v in lm.model.state_dict().items()}
    before = draft_accuracy(lm, key, tokens, cache, vocab, first_target=3)
    log = train_heads(lm, key, tokens, cache, vocab, steps=80, batch=8, lr=3e-3, first_target=0, warmup=5,
                      loss="kl")
    after = draft_accuracy(lm, key, tokens, cache, vocab, first_target=3)
    assert all(torch.equal(v, trunk0[k]) for k, v in lm.model.state_dict().items())
    for k in range(1, len(before) + 1):
        first = sum(r[f"loss{k}"] for r in log[:5]) / 5
        last = sum(r[f"loss{k}"] for r in log[-10:]) / 10
        assert last < 0.8 * first, (k, first, last)
    assert sum(after) > sum(before) + 0.2, (before, after)


def test_unknown_loss_is_one_line():
    lm = _lm(DSMTP2, dtype=torch.float32)
    tokens = torch.randint(0, V, (2, 6))
    with pytest.raises(ForesightError, match="loss must be"):
        train_heads(lm, "dsmtp", tokens, cache_trunk(lm.model, tokens), torch.arange(V), steps=1, batch=1, lr=1e-3,
                    first_target=0, loss="mse")
