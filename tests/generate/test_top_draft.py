"""The TOP head as a drafter: acceptance (longest common prefix with greedy NTP), per-rank agreement, NDCG."""

from __future__ import annotations

import math

import pytest
import torch

from foresight.errors import ForesightError
from foresight.generate import generate, top_draft_acceptance
from foresight.generate.top_draft import _ndcg
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM


def test_ndcg_graded_by_first_occurrence():
    upcoming = [5, 7, 5, 9]  # first occurrences: 5 at d=0, 7 at d=1, 9 at d=3; k = 3 sees 5 and 7 only
    assert _ndcg([5, 7, 1], upcoming, 3) == pytest.approx(1.0)
    assert _ndcg([1, 2, 4], upcoming, 3) == 0.0
    # [7, 5, x]: gains 2 (rank 1) and 3 (rank 2) against the ideal 3, 2.
    want = (2 + 3 / math.log2(3)) / (3 + 2 / math.log2(3))
    assert _ndcg([7, 5, 1], upcoming, 3) == pytest.approx(want)


def test_report_matches_a_direct_count():
    torch.manual_seed(0)
    lm = TrainableLM(ModelConfig(vocab_size=9, hidden_size=16, n_layers=2, n_heads=2, intermediate_size=32,
                                 init_std=0.5), [{"name": "ntp"}, {"name": "top", "window": 8}]).eval()
    prompts = torch.randint(0, 9, (3, 4), generator=torch.Generator().manual_seed(1))
    k, steps = 3, 10
    report = top_draft_acceptance(lm, prompts, steps, k)
    traj = generate(lm.model, prompts, steps + k)
    hist, agree = [0] * (k + 1), [0] * k
    with torch.no_grad():
        for b in range(3):
            for t in range(3, 3 + steps):
                h = lm.model.trunk(traj[b : b + 1, : t + 1]).hidden[0, -1]
                draft = lm.objectives["top"].head(h).topk(k).indices.tolist()
                truth = traj[b, t + 1 : t + 1 + k].tolist()
                lcp = 0
                while lcp < k and draft[lcp] == truth[lcp]:
                    lcp += 1
                hist[lcp] += 1
                agree = [a + int(d == g) for a, d, g in zip(agree, draft, truth)]
    assert report.positions == 3 * steps
    assert report.accepted_hist == hist and report.rank_agree == agree
    assert 0.0 <= report.ndcg <= 1.0 and "mean accepted length" in report.table()


def test_needs_a_top_head():
    lm = TrainableLM(ModelConfig(vocab_size=9, hidden_size=16, n_layers=1, n_heads=2), [{"name": "ntp"}])
    with pytest.raises(ForesightError, match="no TOP head"):
        top_draft_acceptance(lm, torch.zeros(1, 2, dtype=torch.long), 4)
