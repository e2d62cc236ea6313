"""How many drafts to verify per step, from the measured cost of a forward and the running acceptance rates.

A speculative step that verifies k drafts runs one forward over k + 1 tokens and yields 1 + a tokens, a the
accepted prefix. With cost(T) the measured time of a forward over T new tokens (in plain steps) and q_i the
acceptance rate of draft i given that drafts 1..i-1 were accepted, the expected yield of k drafts is

    E[1 + a(k)] = 1 + sum_{i=1..k} prod_{j<=i} q_j

and the chooser picks the k in 0..K that maximises E[1 + a(k)] / cost(k + 1), the expected tokens per unit of
time (drafting time is the same for every k, since a drafter proposes all K and the step keeps k; it is not in
the formula). k = 0 is a plain step. Adaptive draft lengths have been proposed with learned stopping
predictors (e.g. SpecDec++, Huang et al. 2024); this rule uses two measured inputs only: the cost curve of
*this* machine (under MKL a forward over 2-3 tokens can cost more than over 4, so the best k need not grow
with the acceptance) and the acceptance that *this* text is giving. Acceptance rates are assumed independent
of k (true here: the drafts for depths 1..k do not depend on how many are verified).

``cost_curve`` measures cost(T) for T = 1..K+1 once per (model, threads, packed or not, batch size) in a short
calibration on the live KV cache (a few forwards per T, cut back after each), cached on the model object.
``BlockChooser`` keeps the running acceptance counts (exponentially decayed, so a change of text - a copied
stretch ending - shows within a few dozen steps) and every ``explore`` steps verifies all K drafts so that the
rates of depths it stopped verifying are refreshed. The output never depends on k: the verifier decides every
token (``speculative.py``).
"""

from __future__ import annotations

import statistics
import time

import torch

# Prior conditional acceptance per depth before any step was verified, and its weight in steps.
PRIOR_RATE, PRIOR_WEIGHT = 0.5, 2.0


def expected_tokens(rates: list[float], k: int) -> float:
    """E[1 + a(k)] for conditional acceptance rates q_1..q_K (``rates``): 1 + sum_i prod_{j<=i} q_j, i <= k."""
    total, reach = 1.0, 1.0
    for q in rates[:k]:
        reach *= q
        total += reach
    return total


def best_k(costs: list[float], rates: list[float]) -> int:
    """The k in 0..len(rates) maximising expected_tokens(rates, k) / costs[k]; ``costs[t - 1]`` = cost of a
    forward over t tokens (any unit). Ties go to the smaller k."""
    k_max = min(len(rates), len(costs) - 1)
    return max(range(k_max + 1), key=lambda k: (expected_tokens(rates, k) / costs[k], -k))


class BlockChooser:
    """Running acceptance rates per depth and the block size they imply with a given cost curve."""

    def __init__(self, costs: list[float], n_draft: int, decay: float = 0.97, explore: int = 8) -> None:
        self.costs, self.n_draft, self.decay, self.explore = costs, n_draft, decay, explore
        self.reached = [PRIOR_WEIGHT] * n_draft  # decayed counts: draft i proposed with drafts < i accepted
        self.accepted = [PRIOR_WEIGHT * PRIOR_RATE] * n_draft  # ... and draft i accepted
        self.steps = 0
        self.chosen: list[int] = []  # k per step (reports)

    @property
    def rates(self) -> list[float]:
        return [a / r for a, r in zip(self.accepted, self.reached)]

    def choose(self) -> int:
        """Drafts to verify this step: every ``explore``-th step all of them, else the best k."""
        self.steps += 1
        k = self.n_draft if self.steps % self.explore == 0 else best_k(self.costs, self.rates)
        self.chosen.append(k)
        return k

    def observe(self, usable: torch.Tensor, match: torch.Tensor) -> None:
        """One verified step of R rows: ``usable`` (R, d) drafts within budget, ``match`` (R, d) 0/1 accepted
        prefix (as ``SpecStats.record``). Depths > d were not verified and keep their rates."""
        d = match.shape[1]
        if d == 0:
            return
        reach = torch.cat([torch.ones_like(usable[:, :1]), match[:, :-1].bool()], dim=1) & usable  # (R, d)
        counts = torch.stack([reach.sum(dim=0), match.sum(dim=0)]).tolist()  # (2, d)
        for i, (re, ac) in enumerate(zip(*counts)):
            if re:
                self.reached[i] = self.decay * self.reached[i] + re
                self.accepted[i] = self.decay * self.accepted[i] + ac


@torch.no_grad()
def cost_curve(model, caches, pending: torch.Tensor, n_draft: int, repeats: int = 3) -> list[float]:
    """cost(T) / cost(1) for T = 1..n_draft+1: a forward over T copies of ``pending`` (B, 1) against ``caches``
    (cut back after each), medians of ``repeats`` interleaved rounds after one warm-up. Cached on ``model``
    per (threads, packed, batch size, K+1); the caches must be on the scalar path (right after the prefill)."""
    from foresight.generate.packed import is_packed

    key = (torch.get_num_threads(), is_packed(model), pending.shape[0], n_draft + 1)
    store = model.__dict__.setdefault("_foresight_cost_curves", {})
    if key in store:
        return store[key]
    keep = caches[0].offset

    def forward(t: int):
        def run():
            out = model.trunk(pending.expand(-1, t), caches)
            model.lm_head(out.hidden).argmax(-1)
            for cache in caches:
                cache.truncate(keep)
        return run

    runs = [forward(t) for t in range(1, n_draft + 2)]
    for run in runs:
        run()  # warm-up
    times = [[] for _ in runs]  # times[i]: seconds of each round's forward over i + 1 tokens
    for _ in range(repeats):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - t0)
    medians = [statistics.median(t) for t in times]
    store[key] = [m / medians[0] for m in medians]
    return store[key]
