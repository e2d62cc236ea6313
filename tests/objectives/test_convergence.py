"""A short training run per objective on a task where every future token is predictable.

Sequences are cyclic repeats of one fixed random permutation of the vocabulary, starting at a random place:
after one token the whole future is determined, so next-token, MTP and DS-MTP losses can go to ~0 and the TOP
loss can go down to the entropy of its target (its floor, computed here from the targets themselves).
"""

from __future__ import annotations

import math

import pytest
import torch

from foresight.batch import Batch
from foresight.model import ModelConfig
from foresight.objectives import top_targets
from foresight.train.lm import TrainableLM

V, T, BATCH, STEPS, TOP_WINDOW = 16, 32, 16, 200, 8

RUNS = {
    "ntp": [{"name": "ntp"}],
    "ntp+top": [{"name": "ntp"}, {"name": "top", "window": TOP_WINDOW}],
    "ntp+mtp3": [{"name": "ntp"}, {"name": "mtp", "n": 3}],
    "ntp+dsmtp2": [{"name": "ntp"}, {"name": "dsmtp", "depth": 2}],
}
HEADS = {"ntp": 1, "top": 1, "mtp": 2, "dsmtp": 2}  # cross-entropies summed in each objective's loss_sum


pytestmark = pytest.mark.usefixtures("one_thread")


def cyclic_batch(perm: torch.Tensor, length: int, g: torch.Generator) -> Batch:
    start = torch.randint(0, V, (BATCH, 1), generator=g)
    return Batch(perm[(start + torch.arange(length)) % V], T)  # (BATCH, length)


def mean_losses(lm: TrainableLM, batch: Batch) -> dict[str, float]:
    with torch.no_grad():
        return {k: (o.loss_sum / o.count).item() for k, o in lm(batch).items()}


def top_floor(batch: Batch) -> float:
    """Mean entropy of the TOP targets: the lowest TOP loss any model can reach."""
    _, w = top_targets(batch.tokens, T, TOP_WINDOW)
    h = -(w * torch.log(w.clamp_min(1e-30))).sum(-1)
    return h[(w > 0).any(-1)].mean().item()


@pytest.mark.parametrize("run", list(RUNS))
def test_objective_converges(run):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(V, generator=g)
    lm = TrainableLM(ModelConfig(vocab_size=V, hidden_size=32, n_layers=2, n_heads=4), RUNS[run])
    length = T + lm.lookahead
    held_out = cyclic_batch(perm, length, torch.Generator().manual_seed(99))
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2, weight_decay=0.0)

    initial = mean_losses(lm, held_out)
    for _ in range(STEPS):
        out = lm(cyclic_batch(perm, length, g))
        loss = sum(o.loss_sum / o.count for o in out.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final = mean_losses(lm, held_out)

    for key, first in initial.items():
        base = key.split("_")[0]
        floor = top_floor(held_out) if base == "top" else 0.0
        # an untrained model is near uniform: about log V per summed cross-entropy (the test is meaningful)
        assert first > 0.9 * HEADS[base] * math.log(V), (key, first)
        assert final[key] - floor < 0.05 * (first - floor), (
            f"{run}: {key} loss went {first:.3f} -> {final[key]:.4f} (floor {floor:.3f}) in {STEPS} steps")
