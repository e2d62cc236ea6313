"""Generation: greedy == naive argmax loop, sampling filters, seeding, eos handling, train mode restored."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from foresight.generate import generate, sample_next_token, top_k_filter, top_p_filter
from foresight.model import ModelConfig, Transformer

NEG_INF = float("-inf")


def _model(seed: int = 0, **kw) -> Transformer:
    base = dict(vocab_size=41, hidden_size=36, n_layers=2, n_heads=6, n_kv_heads=2, intermediate_size=52,
                max_seq_len=8, init_std=0.3)
    base.update(kw)
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**base))


def _prompt(b: int = 3, p: int = 5, v: int = 41, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, v, (b, p), generator=torch.Generator().manual_seed(seed))


def naive_greedy(model: nn.Module, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Recompute the whole sequence every step, no cache."""
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids)[:, -1, :].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


class FixedLogits(nn.Module):
    """Same next-token logits at every position of every row; records the shapes it was called with."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.lin = nn.Linear(2, 2)  # a submodule, to check modes are restored recursively
        self.calls: list[tuple[int, ...]] = []

    def new_caches(self):
        return [object()]

    def forward(self, ids, caches=None):
        self.calls.append(tuple(ids.shape))
        return self.logits.expand(ids.shape[0], ids.shape[1], -1).clone()


class Successor(nn.Module):
    """Deterministic toy LM: the next token is (last token + 1) mod V. Needs its cache to be passed."""

    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.vocab = vocab
        self.calls: list[tuple[int, ...]] = []

    def new_caches(self):
        return [{"length": 0}]

    def forward(self, ids, caches):
        self.calls.append(tuple(ids.shape))
        caches[0]["length"] += ids.shape[1]
        logits = torch.full((*ids.shape, self.vocab), -5.0)
        logits.scatter_(-1, ((ids + 1) % self.vocab)[..., None], 5.0)
        return logits


# ---------------------------------------------------------------------------------------------------------
# Greedy


def test_greedy_equals_naive_full_recompute_loop():
    model = _model().eval()  # max_seq_len 8 < 5 + 9: RoPE tables grow during decoding too
    ids = _prompt()
    out = generate(model, ids, 9)
    assert out.shape == (3, 14) and out.dtype == torch.long
    assert torch.equal(out[:, :5], ids)
    assert torch.equal(out, naive_greedy(model, ids, 9))
    assert len(set(out[:, 5:].flatten().tolist())) > 1  # not a degenerate constant output


def test_negative_temperature_is_greedy_and_ignores_filters():
    model = _model(seed=2).eval()
    ids = _prompt(seed=3)
    expected = naive_greedy(model, ids, 4)
    assert torch.equal(generate(model, ids, 4, temperature=-1.0), expected)
    assert torch.equal(generate(model, ids, 4, temperature=0.0, top_k=3, top_p=0.5), expected)


def test_prefill_once_then_one_token_per_step():
    model = Successor()
    ids = torch.tensor([[1, 2, 3], [7, 8, 9]])
    out = generate(model, ids, 4)
    assert model.calls == [(2, 3), (2, 1), (2, 1), (2, 1)]  # no forward after the last token
    assert out.tolist() == [[1, 2, 3, 4, 5, 6, 7], [7, 8, 9, 0, 1, 2, 3]]


def test_zero_new_tokens_returns_the_prompt():
    model = Successor()
    ids = torch.tensor([[1, 2, 3]])
    out = generate(model, ids, 0)
    assert torch.equal(out, ids) and out is not ids
    assert model.calls == []


# ---------------------------------------------------------------------------------------------------------
# Sampling


def test_sampling_with_top_k_1_equals_greedy():
    model = _model(seed=4).eval()
    ids = _prompt(seed=5)
    g = torch.Generator().manual_seed(0)
    out = generate(model, ids, 6, temperature=1.7, top_k=1, generator=g)
    assert torch.equal(out, naive_greedy(model, ids, 6))


def test_sampling_with_tiny_top_p_equals_greedy():
    model = _model(seed=4).eval()
    ids = _prompt(seed=5)
    out = generate(model, ids, 6, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, naive_greedy(model, ids, 6))


def test_seeded_sampling_is_reproducible():
    model = _model(seed=6).eval()
    ids = _prompt(seed=7)
    kw = dict(temperature=1.0, top_k=20, top_p=0.95)
    a = generate(model, ids, 8, generator=torch.Generator().manual_seed(123), **kw)
    b = generate(model, ids, 8, generator=torch.Generator().manual_seed(123), **kw)
    c = generate(model, ids, 8, generator=torch.Generator().manual_seed(124), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, naive_greedy(model, ids, 8))  # it really samples


def test_sampled_tokens_come_only_from_the_top_k():
    logits = torch.tensor([0.0, 2.0, -1.0, 1.5, 0.5, 1.0])  # top 2: tokens 1 and 3
    model = FixedLogits(logits)
    ids = torch.zeros(400, 1, dtype=torch.long)
    out = generate(model, ids, 5, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    new = out[:, 1:]
    assert set(new.unique().tolist()) == {1, 3}
    # Frequencies follow the renormalised distribution e^2 : e^1.5 (p(1) ~ 0.622); 2000 draws, ~4.6 sigma.
    freq = (new == 1).float().mean().item()
    assert abs(freq - 1 / (1 + math.exp(-0.5))) < 0.05


def test_sampled_tokens_come_only_from_the_nucleus():
    probs = torch.tensor([0.05, 0.4, 0.02, 0.3, 0.2, 0.03])  # sorted: 1 (.4), 3 (.7), 4 (.9), 0, 5, 2
    model = FixedLogits(probs.log())
    ids = torch.zeros(300, 2, dtype=torch.long)
    out = generate(model, ids, 4, temperature=1.0, top_p=0.8, generator=torch.Generator().manual_seed(1))
    assert set(out[:, 2:].unique().tolist()) == {1, 3, 4}


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[1.0, 0.0]]).expand(4000, 2)
    g = torch.Generator().manual_seed(2)
    cold = sample_next_token(logits, temperature=0.25, generator=g)
    hot = sample_next_token(logits, temperature=4.0, generator=g)
    # p(0) = sigmoid(1 / T): 0.982 at T = 0.25, 0.562 at T = 4.
    assert abs((cold == 0).float().mean().item() - 1 / (1 + math.exp(-4))) < 0.02
    assert abs((hot == 0).float().mean().item() - 1 / (1 + math.exp(-0.25))) < 0.03


def test_sample_next_token_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -2.0], [5.0, 4.0, 4.5]])
    assert sample_next_token(logits).tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------------------
# Filters


def test_top_k_filter_keeps_exactly_k():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.9, 1.7, -0.2, 0.0]])
    for k, kept in [(1, {2}), (2, {2, 4}), (3, {2, 4, 3}), (7, set(range(7))), (50, set(range(7)))]:
        out = top_k_filter(logits, k)
        finite = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
        assert finite == kept, k
        assert torch.equal(out[0, list(kept)], logits[0, list(kept)])  # kept values are unchanged
    assert torch.isfinite(logits).all()  # input untouched


def test_top_k_filter_keeps_exactly_k_with_ties_and_batches():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 11, generator=g)
    logits[0] = 1.0  # all tied
    logits[1, :4] = 9.0  # a four-way tie at the top
    out = top_k_filter(logits, 3)
    assert torch.isfinite(out).sum(dim=-1).tolist() == [3] * 5
    for row in range(2, 5):
        top = set(logits[row].topk(3).indices.tolist())
        assert set(torch.isfinite(out[row]).nonzero().flatten().tolist()) == top


def test_top_p_filter_on_hand_made_distribution():
    probs = torch.tensor([0.1, 0.45, 0.05, 0.25, 0.15])  # ranked: 1 (.45), 3 (.70), 4 (.85), 0 (.95), 2 (1.0)
    logits = probs.log() + 3.0  # a shift does not change the distribution
    cases = [
        (0.01, {1}),
        (0.44, {1}),
        (0.46, {1, 3}),
        (0.69, {1, 3}),
        (0.71, {1, 3, 4}),
        (0.9, {1, 3, 4, 0}),
        (0.97, {1, 3, 4, 0, 2}),
        (1.0, {0, 1, 2, 3, 4}),
    ]
    for p, kept in cases:
        out = top_p_filter(logits, p)
        assert set(torch.isfinite(out).nonzero().flatten().tolist()) == kept, p
        assert torch.equal(out[list(kept)], logits[list(kept)])


def test_top_p_filter_batched_rows_are_independent():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.34, 0.33, 0.33]]))
    out = top_p_filter(logits, 0.5)
    assert torch.isfinite(out).tolist() == [[True, False, False], [False, False, True], [True, True, False]]


def test_top_p_after_top_k_ignores_removed_tokens():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    # After top-2 the distribution is (4/7, 3/7): p = 0.5 keeps only the first.
    out = top_p_filter(top_k_filter(logits, 2), 0.5)
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_top_k_filter_rejects_bad_k(bad):
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(torch.zeros(1, 3), bad)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, float("nan")])
def test_top_p_filter_rejects_bad_p(bad):
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(torch.zeros(1, 3), bad)


# ---------------------------------------------------------------------------------------------------------
# EOS, argument validation, mode


def test_eos_rows_keep_emitting_eos_and_others_continue():
    model = Successor(vocab=10)
    ids = torch.tensor([[5], [1], [8]])  # eos 7 after 2, 6 and (wrapping 9, 0, ...) 9 steps
    out = generate(model, ids, 5, eos_id=7)
    assert out.tolist() == [
        [5, 6, 7, 7, 7, 7],
        [1, 2, 3, 4, 5, 6],
        [8, 9, 0, 1, 2, 3],
    ]


def test_generation_stops_early_when_every_row_is_done():
    model = Successor(vocab=10)
    ids = torch.tensor([[5], [4], [6]])  # eos 7 after 2, 3 and 1 steps
    out = generate(model, ids, 20, eos_id=7)
    assert out.tolist() == [[5, 6, 7, 7], [4, 5, 6, 7], [6, 7, 7, 7]]
    assert model.calls == [(3, 1), (3, 1), (3, 1)]  # prefill + 2 decoding steps, then all rows are done


def test_eos_with_a_real_model_matches_greedy_up_to_eos():
    model = _model(seed=8).eval()
    ids = _prompt(seed=9)
    plain = generate(model, ids, 8)
    eos = int(plain[0, 7])  # what row 0 emits at its third step
    out = generate(model, ids, 8, eos_id=eos)
    for row in range(3):
        new = plain[row, 5:].tolist()
        stop = new.index(eos) + 1 if eos in new else len(new)
        assert out[row, 5 : 5 + stop].tolist() == new[:stop]
        assert all(t == eos for t in out[row, 5 + stop :].tolist())
    assert out.shape[1] <= plain.shape[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(max_new_tokens=3, temperature=1.0, top_p=0.0), "top_p"),
        (dict(max_new_tokens=3, temperature=1.0, top_p=1.2), "top_p"),
        (dict(max_new_tokens=3, temperature=1.0, top_k=0), "top_k"),
        (dict(max_new_tokens=3, top_k=-2), "top_k"),  # validated even when greedy
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(Successor(), torch.tensor([[1, 2]]), **kwargs)


@pytest.mark.parametrize("ids", [torch.tensor([1, 2, 3]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(1, 3)])
def test_invalid_input_ids_raise_value_error(ids):
    with pytest.raises(ValueError, match="input_ids"):
        generate(Successor(), ids, 2)


def test_training_mode_is_restored():
    model = _model(seed=10)
    model.train()
    ids = _prompt(seed=11)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    generate(model, ids, 3, temperature=1.0, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert seen and not any(seen)  # ran in eval mode
    assert model.training and all(m.training for m in model.modules())

    model.eval()
    generate(model, ids, 2)
    assert not model.training and not any(m.training for m in model.modules())


class FailsOnSecondCall(FixedLogits):
    def forward(self, ids, caches=None):
        if self.calls:
            raise RuntimeError("boom")
        return super().forward(ids, caches)


def test_mixed_submodule_modes_are_restored_even_on_error():
    model = FailsOnSecondCall(torch.zeros(4))
    model.train()
    model.lin.eval()
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 3)
    assert model.training and not model.lin.training
    model.calls.clear()
    assert generate(model, torch.zeros(1, 1, dtype=torch.long), 1).shape == (1, 2)  # one forward only
    assert model.training and not model.lin.training
