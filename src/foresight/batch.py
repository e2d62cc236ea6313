"""The packed batch every objective reads and every data source produces.

A neutral module (no model, objective or data code) so that ``data/`` and ``objectives/`` both depend on it
rather than on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A packed batch.

    tokens: (B, L) long, L >= seq_len + 1. The model reads ``tokens[:, :seq_len]``; the rest is look-ahead
        for the labels of the last positions (1 token for NTP, more for TOP / MTP / DS-MTP).
    loss_mask: (B, seq_len) bool or None. Positions whose predictions are trained (star graph: only the
        positions that predict the answer path). None = every position.
    horizon: (B, seq_len) long or None. For position t, the largest offset j whose target ``tokens[t + 1 + j]``
        may be used: the offset of the first end-of-document token after t, so that future-aware targets
        (TOP, MTP, DS-MTP) stop at a document boundary, the EOS itself included. The next-token label
        (j = 0) is always kept. None = targets cross documents, as in the paper.
    """

    tokens: torch.Tensor
    seq_len: int
    loss_mask: torch.Tensor | None = None
    horizon: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return self.tokens[:, : self.seq_len]

    def to(self, device: torch.device | str) -> "Batch":
        mask = None if self.loss_mask is None else self.loss_mask.to(device)
        horizon = None if self.horizon is None else self.horizon.to(device)
        return Batch(self.tokens.to(device), self.seq_len, mask, horizon)

    def rows(self, start: int, stop: int) -> "Batch":
        """Sequences ``start .. stop - 1`` (a micro-batch)."""
        mask = None if self.loss_mask is None else self.loss_mask[start:stop]
        horizon = None if self.horizon is None else self.horizon[start:stop]
        return Batch(self.tokens[start:stop], self.seq_len, mask, horizon)
