"""The TOP head as a drafter (the measurement the TOP authors ran after the paper; docs/paper-setups.md).

The TOP head scores every vocabulary item by how soon it should appear after the current position (TOP paper
§3: the target ranks upcoming tokens by first-occurrence distance). Ranking the vocabulary by the TOP
logits at the last position and reading the top k in order gives a draft of the next k tokens — a cheap one:
one extra V x D product, no extra block. Two uses:

* ``top_draft_acceptance``: walk a greedy NTP trajectory and, at each position, compare the TOP top-k list
  with the next k greedy tokens: accepted length = their longest common prefix (what greedy verification
  would keep), per-rank agreement, and NDCG@k of the ranking against the tokens that actually follow.
* ``TOPDrafter``: the same ranking inside the speculative decoder (``foresight.generate.speculative``), to
  measure wall-clock speed. The pending token x[N] is already fixed by head 0, so the drafts for x[N+1..] are
  the TOP ranking with the pending token removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from foresight.generate.drafters import Drafter
from foresight.generate.rows import Index, pick
from foresight.generate.sampling import generate


class TOPDrafter(Drafter):
    name = "top"

    def __init__(self, model, top_head: torch.nn.Linear, n_draft: int = 3) -> None:
        self.model, self.head, self.n_draft = model, top_head, n_draft

    def propose(self, out, seq: torch.Tensor, pos0: Index, n: Index) -> torch.Tensor:
        scores = self.head(pick(out.hidden, n - pos0 - 1)).float()  # (B, V): TOP logits at the last committed position
        scores.scatter_(-1, pick(seq, n)[:, None], float("-inf"))  # the pending token x[N] is already decided
        return scores.topk(self.n_draft, dim=-1).indices  # (B, k) in rank order


@dataclass
class TOPDraftReport:
    """Greedy-NTP agreement of TOP top-k drafts, over ``positions`` draft points."""

    k: int
    positions: int = 0
    accepted_hist: list[int] = field(default_factory=list)  # number of positions with LCP = 0..k
    rank_agree: list[int] = field(default_factory=list)  # positions where rank r (1..k) equals greedy token r
    ndcg_sum: float = 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean longest common prefix of the draft with the greedy continuation (0..k)."""
        return sum(i * c for i, c in enumerate(self.accepted_hist)) / max(self.positions, 1)

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / max(self.positions, 1)

    def table(self) -> str:
        lines = [f"TOP head as a drafter: top-{self.k} vs the next {self.k} greedy NTP tokens, "
                 f"{self.positions} positions",
                 "", "| rank | agrees with greedy token at that offset | accepted (prefix) |", "|---|---|---|"]
        tail = sum(self.accepted_hist)
        for r in range(1, self.k + 1):
            tail -= self.accepted_hist[r - 1]
            lines.append(f"| {r} | {self.rank_agree[r - 1] / max(self.positions, 1):.1%} | "
                         f"{tail / max(self.positions, 1):.1%} |")
        lines += ["", f"mean accepted length (LCP, 0..{self.k}): {self.mean_accepted:.3f}; "
                  f"NDCG@{self.k}: {self.ndcg:.3f}"]
        return "\n".join(lines) + "\n"


def _ndcg(ranking: list[int], upcoming: list[int], k: int) -> float:
    """NDCG@k with the TOP target's graded relevance: a token first appearing at offset d < k gains k - d."""
    gain: dict[int, int] = {}
    for d, tok in enumerate(upcoming[:k]):
        gain.setdefault(tok, k - d)
    dcg = sum(gain.get(tok, 0) / math.log2(r + 2) for r, tok in enumerate(ranking[:k]))
    ideal = sorted(gain.values(), reverse=True)
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal[:k]))
    return dcg / idcg if idcg > 0 else 0.0


@torch.no_grad()
def top_draft_acceptance(lm, prompts: torch.Tensor, steps: int, k: int = 4,
                         eos_id: int | None = None) -> TOPDraftReport:
    """Greedy-decode ``steps + k`` tokens from each prompt (B, P); at each of the first ``steps`` generated
    positions (the prompt's last position included) draft top-k with the TOP head and compare.

    Uses ``lm.model`` for NTP and the first objective with a ``future_head`` (TOP's ``W_top``); one extra
    forward over the whole trajectory gives every hidden state (the trunk is causal, so they equal the ones seen
    while decoding).
    """
    heads = [h for h in (o.future_head() for o in lm.objectives.values()) if h is not None]
    if not heads:
        from foresight.errors import ForesightError

        raise ForesightError("this model has no TOP head (train with objective 'top' to draft with it)")
    head = heads[0]  # (..., D) -> (..., V): the objective's ranking of upcoming tokens (Objective.future_head)
    model = lm.model.eval()
    p = prompts.shape[1]
    traj = generate(model, prompts, steps + k, eos_id=eos_id)  # (B, P + n)
    hidden = model.trunk(traj).hidden  # (B, P + n, D)
    report = TOPDraftReport(k, accepted_hist=[0] * (k + 1), rank_agree=[0] * k)
    for t in range(p - 1, p - 1 + steps):
        if t + k >= traj.shape[1]:
            break
        ranking = head(hidden[:, t]).topk(k, dim=-1).indices  # (B, k)
        upcoming = traj[:, t + 1 : t + 1 + k]  # (B, k): greedy tokens x[t+1..t+k]
        agree = ranking == upcoming  # (B, k)
        lcp = agree.long().cumprod(dim=1).sum(dim=1)  # (B,)
        for b in range(traj.shape[0]):
            report.accepted_hist[int(lcp[b])] += 1
            report.ndcg_sum += _ndcg(ranking[b].tolist(), traj[b, t + 1 :].tolist(), k)
        report.rank_agree = [a + int(c) for a, c in zip(report.rank_agree, agree.sum(dim=0))]
        report.positions += traj.shape[0]
    return report
