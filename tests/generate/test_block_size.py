"""Block size from measured costs: the chooser against a brute-force search over outcomes, the running rates, and
speculative decoding with ``n_draft="auto"`` token-for-token equal to plain greedy for every drafter, B = 1 and
batches."""

from __future__ import annotations

import itertools

import pytest
import torch

from foresight.errors import ForesightError
from foresight.generate import generate, speculative_generate
from foresight.generate.block_size import BlockChooser, best_k, cost_curve, expected_tokens
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

from helpers import randomize_weights


def _brute_force_k(costs: list[float], rates: list[float]) -> tuple[int, float]:
    """Enumerate every accept/reject outcome of k drafts (independent with the conditional rates): the tokens a
    step yields are 1 + the accepted prefix; the best k maximises expected tokens / cost (ties: smaller k)."""
    best = (0, 1.0 / costs[0])
    for k in range(1, min(len(rates), len(costs) - 1) + 1):
        mean = 0.0
        for outcome in itertools.product([True, False], repeat=k):
            prob = 1.0
            for ok, q in zip(outcome, rates):
                prob *= q if ok else 1 - q
            prefix = next((i for i, ok in enumerate(outcome) if not ok), k)
            mean += prob * (1 + prefix)
        if mean / costs[k] > best[1] + 1e-12:
            best = (k, mean / costs[k])
    return best


@pytest.mark.parametrize("seed", range(60))
def test_chooser_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    k_max = int(torch.randint(1, 8, (1,), generator=g))
    rates = torch.rand(k_max, generator=g).tolist()
    # costs: 1 for T = 1, then anything from 0.8 to 2.5 (MKL's curve is not monotone)
    costs = [1.0] + (0.8 + 1.7 * torch.rand(k_max, generator=g)).tolist()
    k, value = _brute_force_k(costs, rates)
    assert best_k(costs, rates) == k
    assert expected_tokens(rates, k) / costs[k] == pytest.approx(value)


def test_chooser_cases_by_hand():
    assert best_k([1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.1]) == 3  # free verification: draft everything
    assert best_k([1.0, 1.6, 2.0, 1.4], [0.5, 0.5, 0.5]) == 3  # the MKL shape: 3 drafts beat 1 and 2
    assert best_k([1.0, 1.6, 2.0, 1.4], [0.25, 0.25, 0.25]) == 0  # poor drafts at 1.4x: plain steps
    assert best_k([1.0, 1.1, 1.2, 1.3], [0.9, 0.9, 0.0]) == 2  # depth 3 never right: stop at 2


def test_running_rates_follow_the_observations():
    chooser = BlockChooser([1.0, 1.05, 1.1, 1.15], 3, decay=1.0, explore=1000)
    for _ in range(200):  # depth 1 always right, depth 2 never
        chooser.observe(torch.ones(2, 3, dtype=torch.bool), torch.tensor([[1, 0, 0], [1, 0, 0]]))
    q1, q2, q3 = chooser.rates
    assert q1 > 0.99 and q2 < 0.01 and q3 == pytest.approx(0.5)  # depth 3 never reached: the prior
    assert chooser.choose() == 1


def _lm(specs, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=13, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40,
                      max_seq_len=64)
    lm = TrainableLM(cfg, specs)
    randomize_weights(lm, seed + 1, norm_scale=0.2)
    return lm.eval()


@pytest.mark.parametrize("drafter", ["mtp", "dsmtp", "top", "ngram", "ngram+mtp", "ngram+dsmtp"])
@pytest.mark.parametrize("b, p, n", [(1, 9, 40), (3, 6, 25)])
def test_auto_block_size_is_exact(drafter, b, p, n):
    lm = _lm([{"name": "ntp"}, {"name": "mtp", "n": 4}, {"name": "dsmtp", "depth": 3}, {"name": "top", "window": 6}])
    base = torch.randint(0, 13, (b, 3), generator=torch.Generator().manual_seed(p))
    ids = base.repeat(1, -(-p // 3))[:, :p]  # repetitive prompts, so n-grams match
    want = generate(lm.model, ids, n)
    got, stats = speculative_generate(lm, ids, n, drafter, n_draft="auto")
    assert torch.equal(got, want)
    assert stats.block_sizes and max(stats.block_sizes) <= stats.n_draft
    assert stats.steps == len(stats.block_sizes)


def test_cost_curve_is_cached_per_model_threads_and_batch():
    lm = _lm([{"name": "ntp"}])
    model = lm.model
    caches = model.new_caches()
    ids = torch.tensor([[1, 2, 3, 4]])
    model.trunk(ids, caches)
    curve = cost_curve(model, caches, ids[:, -1:], 3)
    assert len(curve) == 4 and curve[0] == 1.0 and all(c > 0 for c in curve)
    assert caches[0].offset == 4  # the calibration cut the cache back
    assert cost_curve(model, caches, ids[:, -1:], 3) is curve


def test_bad_n_draft_is_one_line():
    lm = _lm([{"name": "ntp"}, {"name": "mtp", "n": 3}])
    with pytest.raises(ForesightError, match="integer or 'auto'"):
        speculative_generate(lm, torch.tensor([[1, 2]]), 4, "mtp", n_draft="many")


@pytest.mark.parametrize("curve", ["steep", "mkl-like"])
@pytest.mark.parametrize("b", [1, 3])
def test_exact_whatever_the_cost_curve_picks(monkeypatch, curve, b):
    """Forced cost curves make the chooser vary k (0 = a plain step, K on explore steps): still plain greedy."""
    import foresight.generate.speculative as spec

    costs = {"steep": lambda k: [1.0 + t for t in range(k + 1)],
             "mkl-like": lambda k: ([1.0, 1.6, 2.0, 1.4] + [1.5] * k)[: k + 1]}[curve]
    monkeypatch.setattr(spec, "cost_curve", lambda model, caches, pending, k: costs(k))
    lm = _lm([{"name": "ntp"}, {"name": "mtp", "n": 4}])
    ids = torch.randint(0, 13, (b, 3), generator=torch.Generator().manual_seed(b)).repeat(1, 3)
    want = generate(lm.model, ids, 30)
    for drafter in ("mtp", "ngram"):
        got, stats = speculative_generate(lm, ids, 30, drafter, n_draft="auto")
        assert torch.equal(got, want)
        assert len(set(stats.block_sizes)) >= 2  # the choice changed during the run
