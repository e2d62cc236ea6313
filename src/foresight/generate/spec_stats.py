"""The counts of a speculative decoding run (``speculative_generate``, ``generate/wrapped.py``): how many drafts
were proposed, reached and accepted at each depth, and the tokens each verification step gained."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SpecStats:
    """Counts over (row, step) pairs of unfinished rows; ``steps`` counts verification forwards.

    A row is unfinished at a step when it has budget left and has not produced eos (finished rows leave the
    batch); drafts past a row's remaining budget are not counted as drafted."""

    n_draft: int
    steps: int = 0
    batch: int = 1  # rows decoded together
    drafted: list[int] = field(default_factory=list)  # per draft position i: drafts proposed
    accepted: list[int] = field(default_factory=list)  # per draft position i: drafts accepted (prefix)
    reached: list[int] = field(default_factory=list)  # per draft position i: proposed with drafts < i accepted
    row_steps: int = 0  # (row, step) pairs of unfinished rows
    row_tokens: int = 0  # sum over those pairs of 1 + a_row: the tokens every row gained
    block_sizes: list[int] = field(default_factory=list)  # drafts verified per step, when chosen per step

    def __post_init__(self) -> None:
        self.drafted = self.drafted or [0] * self.n_draft
        self.accepted = self.accepted or [0] * self.n_draft
        self.reached = self.reached or [0] * self.n_draft

    @property
    def acceptance(self) -> list[float]:
        """P(draft i is accepted), i = 1..n_draft: it and every draft before it matched."""
        return [a / d if d else float("nan") for a, d in zip(self.accepted, self.drafted)]

    @property
    def conditional_acceptance(self) -> list[float]:
        """P(draft i accepted | draft i-1 accepted): the drafter's accuracy at depth i on the right path."""
        return [a / r if r else float("nan") for a, r in zip(self.accepted, self.reached)]

    @property
    def tau(self) -> float:
        """Mean accepted length per row and step, the verified token included (1 .. n_draft + 1)."""
        return self.row_tokens / max(self.row_steps, 1)

    @property
    def tokens_per_step(self) -> float:
        """Tokens per row slot per verification forward, the slots of rows that had already finished counting
        0: how much of the batch kept decoding (<= tau; = tau at batch size 1)."""
        return self.row_tokens / max(self.steps * self.batch, 1)

    def record(self, usable: torch.Tensor, match: torch.Tensor) -> None:
        """Count one verification step of R rows: ``usable`` (R, d) the drafts within each row's budget, ``match``
        (R, d) 0/1 the accepted prefix."""
        reach = torch.cat([torch.ones_like(usable[:, :1]), match[:, :-1].bool()], dim=1)[:, : usable.shape[1]] & usable
        self.steps += 1
        self.row_steps += match.shape[0]
        self.row_tokens += match.shape[0] + int(match.sum())
        counts = torch.stack([usable.sum(dim=0), match.sum(dim=0), reach.sum(dim=0)]).tolist()  # (3, d)
        for i, (dr, ac, re) in enumerate(zip(*counts)):
            self.drafted[i] += dr
            self.accepted[i] += ac
            self.reached[i] += re
