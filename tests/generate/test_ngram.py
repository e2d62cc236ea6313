"""The n-gram (prompt lookup) drafter: the lookup itself against a plain loop, and speculative decoding with it
(alone and in front of MTP / DS-MTP heads) token-for-token equal to plain greedy decoding, B = 1 and batches."""

from __future__ import annotations

import pytest
import torch

from foresight.errors import ForesightError
from foresight.generate import generate, make_drafter, speculative_generate
from foresight.generate.ngram import NgramDrafter, lookup
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

from helpers import randomize_weights


def _plain_lookup(context: list[int], n_draft: int, max_ngram: int, min_ngram: int):
    for k in range(min(max_ngram, len(context) - 1), min_ngram - 1, -1):
        suffix = context[-k:]
        for start in range(len(context) - k - 1, -1, -1):  # most recent first; something must follow
            if context[start : start + k] == suffix:
                follow = context[start + k : start + k + n_draft]
                while len(follow) < n_draft:
                    follow = follow + follow[: n_draft - len(follow)]
                return follow
    return None


@pytest.mark.parametrize("seed", range(40))
def test_lookup_equals_a_plain_loop(seed):
    g = torch.Generator().manual_seed(seed)
    length = int(torch.randint(1, 30, (1,), generator=g))
    context = torch.randint(0, 4 if seed % 2 else 9, (length,), generator=g)
    for n_draft, max_ngram, min_ngram in ((1, 1, 1), (4, 3, 1), (7, 5, 2)):
        got = lookup(context, n_draft, max_ngram, min_ngram)
        want = _plain_lookup(context.tolist(), n_draft, max_ngram, min_ngram)
        assert (got is None and want is None) or got.tolist() == want


def test_lookup_takes_the_longest_then_most_recent_match():
    ctx = torch.tensor([5, 1, 2, 7, 1, 2, 8, 9, 3, 1, 2])
    assert lookup(ctx, 2, 3, 1).tolist() == [8, 9]  # "1 2" last seen before 8 9
    ctx = torch.tensor([0, 1, 2, 6, 3, 1, 2, 7, 0, 1, 2])
    assert lookup(ctx, 1, 3, 1).tolist() == [6]  # "0 1 2" (3 tokens) beats the more recent "1 2"


def _lm(specs, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=13, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40,
                      max_seq_len=8)
    lm = TrainableLM(cfg, specs)
    randomize_weights(lm, seed + 1, norm_scale=0.2)
    return lm.eval()


@pytest.mark.parametrize("fallback", [None, "mtp", "dsmtp"])
@pytest.mark.parametrize("b, p, n", [(1, 9, 30), (3, 6, 25), (4, 2, 17)])
def test_output_is_identical_to_plain_greedy(fallback, b, p, n):
    specs = [{"name": "ntp"}, {"name": "mtp", "n": 4}] if fallback != "dsmtp" else \
        [{"name": "ntp"}, {"name": "dsmtp", "depth": 3}]
    lm = _lm(specs)
    # Repetitive prompts, so n-grams match and some drafts are accepted.
    base = torch.randint(0, 13, (b, 3), generator=torch.Generator().manual_seed(p))
    ids = base.repeat(1, -(-p // 3))[:, :p]
    want = generate(lm.model, ids, n)
    drafter = NgramDrafter(fallback=make_drafter(lm, fallback)) if fallback else NgramDrafter(n_draft=5)
    got, stats = speculative_generate(lm, ids, n, drafter)
    assert torch.equal(got, want)
    assert drafter.proposed > 0 and drafter.matched > 0


def test_a_random_model_that_loops_gets_its_loop_drafted():
    """Greedy decoding of a random model falls into a cycle; once it has, prompt lookup drafts it exactly."""
    lm = _lm([{"name": "ntp"}])
    ids = torch.tensor([[1, 2, 3]])
    drafter = NgramDrafter(n_draft=6)
    got, stats = speculative_generate(lm, ids, 120, drafter)
    assert torch.equal(got, generate(lm.model, ids, 120))
    assert stats.tau > 2.0  # most steps accept several drafts


def test_bad_settings_are_one_line():
    with pytest.raises(ForesightError, match="n-gram sizes"):
        NgramDrafter(max_ngram=2, min_ngram=3)
    lm = _lm([{"name": "ntp"}, {"name": "mtp", "n": 3}])
    with pytest.raises(ForesightError, match="as many tokens as its fallback"):
        NgramDrafter(n_draft=5, fallback=make_drafter(lm, "mtp"))


def test_make_drafter_builds_ngram_alone_and_in_front_of_heads():
    lm = _lm([{"name": "ntp"}, {"name": "mtp", "n": 3}])
    alone = make_drafter(lm, "ngram", 6)
    assert isinstance(alone, NgramDrafter) and alone.n_draft == 6 and alone.fallback is None
    both = make_drafter(lm, "ngram+mtp")
    assert both.n_draft == 2 and both.fallback.name == "mtp"
    with pytest.raises(ForesightError, match="drafter must be one of"):
        make_drafter(lm, "ngram+foo")
    with pytest.raises(ForesightError, match="no dsmtp heads"):
        make_drafter(lm, "ngram+dsmtp")
