"""Next-token prediction: mean cross-entropy of ``lm_head(h_t)`` against ``x[t+1]``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foresight.batch import Batch
from foresight.objectives.base import IGNORE_INDEX, LossOutput, Objective, hidden_rows, shifted_labels
from foresight.ops import linear_cross_entropy


@dataclass
class NTPConfig:
    """Plain next-token prediction."""

    weight: float | list = 1.0  # loss weight: a number, or a schedule [[{step: s}, value], ...] (objectives/weights.py)


class NTP(Objective):
    name = "ntp"
    next_token = True

    def __init__(self, cfg: NTPConfig, model_cfg=None) -> None:
        super().__init__()
        self.cfg = cfg

    def count(self, batch: Batch) -> torch.Tensor:
        return (shifted_labels(batch, 0) != IGNORE_INDEX).sum()

    def rows_needed(self, batch: Batch) -> torch.Tensor | None:
        return batch.loss_mask  # with a loss mask, only its rows reach the head (forward)

    def forward(self, out, batch: Batch, model) -> LossOutput:
        labels = shifted_labels(batch, 0)  # (B, T)
        d = out.hidden.shape[-1]
        if batch.loss_mask is not None:
            # Only the trained positions (star graph: l of P + l − 1) reach the head: the other rows' losses are 0.
            keep = labels != IGNORE_INDEX  # (B, T)
            losses = linear_cross_entropy(hidden_rows(out, keep), model.lm_head.weight, labels[keep])  # (n,)
            return LossOutput(losses.sum(), keep.sum())
        losses = linear_cross_entropy(out.hidden.reshape(-1, d), model.lm_head.weight, labels.reshape(-1))
        return LossOutput(losses.sum(), (labels != IGNORE_INDEX).sum())
