"""An n-gram drafter from the context itself (prompt lookup decoding): no heads, no training.

If the last k tokens of x[0..N] (the pending x[N] included) occurred earlier in the sequence, the tokens that
followed that earlier occurrence are a good guess for what follows now: code edits, quotes, repeated names and
boilerplate copy long stretches of the prompt. k runs from ``max_ngram`` down to ``min_ngram``; the most recent
match of the longest k wins. Where nothing matches, a ``fallback`` drafter (the model's own MTP heads or DS-MTP
modules) drafts instead; it sees every step either way, so its caches stay in step with the trunk.

Drafts decide speed only: the verifier (``generate/speculative.py``) decides every token, so the output is plain
greedy decoding's whatever is proposed.
"""

from __future__ import annotations

import torch

from foresight.errors import ForesightError
from foresight.generate.drafters import Drafter
from foresight.generate.rows import Index, pick

MAX_NGRAM = 16


def lookup(context: torch.Tensor, n_draft: int, max_ngram: int, min_ngram: int) -> torch.Tensor | None:
    """The ``n_draft`` tokens that followed the most recent earlier occurrence of the longest suffix (``max_ngram``
    .. ``min_ngram`` tokens) of ``context`` (L,), or None if no suffix recurs. A match near the end that has fewer
    than ``n_draft`` followers is extended by repeating the followers it has (a guess like any other)."""
    length = context.shape[0]
    for k in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = context[length - k:]  # (k,)
        # (L - k, k): every k-gram that ends before the suffix ends, so something always follows it
        windows = context[: length - 1].unfold(0, k, 1)
        hits = (windows == suffix).all(-1).nonzero().flatten()  # start indices
        if hits.numel():
            start = int(hits[-1]) + k  # the most recent match: what followed it
            follow = context[start : start + n_draft]
            reps = -(-n_draft // follow.shape[0])
            return follow.repeat(reps)[:n_draft]
    return None


class NgramDrafter(Drafter):
    """Prompt lookup: drafts copied from earlier in the sequence (see the module doc); ``fallback`` where no
    n-gram matches (its ``n_draft`` is used then), else the pending token repeated."""

    name = "ngram"

    def __init__(self, n_draft: int | None = None, max_ngram: int = 3, min_ngram: int = 1,
                 fallback: Drafter | None = None) -> None:
        if not 1 <= min_ngram <= max_ngram <= MAX_NGRAM:
            raise ForesightError(f"n-gram sizes must satisfy 1 <= min_ngram <= max_ngram <= {MAX_NGRAM}, "
                                 f"got {min_ngram} and {max_ngram}")
        n_draft = n_draft or (fallback.n_draft if fallback is not None else 4)
        if fallback is not None and n_draft != fallback.n_draft:
            raise ForesightError(f"the n-gram drafter drafts as many tokens as its fallback ({fallback.n_draft}), "
                                 f"got {n_draft}")
        self.n_draft, self.max_ngram, self.min_ngram, self.fallback = n_draft, max_ngram, min_ngram, fallback
        self.matched = 0  # rows × steps where the n-gram drafted (for reports)
        self.proposed = 0  # rows × steps

    def reset(self) -> None:
        self.matched = self.proposed = 0
        if self.fallback is not None:
            self.fallback.reset()

    def keep_rows(self, rows: torch.Tensor) -> None:
        if self.fallback is not None:
            self.fallback.keep_rows(rows)

    def propose(self, out, seq: torch.Tensor, pos0: Index, n: Index) -> torch.Tensor:
        # (B, n_draft): the fallback's drafts (it must see every step), replaced row by row where an n-gram matches.
        if self.fallback is not None:
            drafts = self.fallback.propose(out, seq, pos0, n).clone()
        else:
            drafts = pick(seq, n)[:, None].expand(-1, self.n_draft).clone()  # the pending token x[N], repeated
        for b in range(seq.shape[0]):
            end = int(n[b]) if isinstance(n, torch.Tensor) else n  # x[0..N] of this row: committed + pending
            found = lookup(seq[b, : end + 1], self.n_draft, self.max_ngram, self.min_ngram)
            self.proposed += 1
            if found is not None:
                drafts[b] = found
                self.matched += 1
        return drafts
