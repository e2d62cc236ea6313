"""Meta-style multi-token prediction (Meta MTP §2, Gloeckle et al. 2024; docs/objectives.md).

A shared trunk, then n parallel heads, each one full transformer block on the same trunk output, sharing
the final norm and the output head; head k predicts x[t+1+k]. In foresight the model's own last block *is*
head 0 (so the model generates with head 0 alone and NTP is the ordinary ``ntp`` objective); this objective
owns heads 1..n-1, which read the input of that last block. An "MTP-n" run is ``[ntp, mtp(n)]``, whose total
loss is the sum of the n cross-entropies, as in the paper and the TOP authors' baseline.

Normalisation: every head's loss sum is divided by the NTP count (positions with a next-token label), so a
deeper head's missing labels at the end of a sequence do not inflate its weight.

Training (``forward_backward``) follows the paper's memory-efficient implementation (§2, Fig. 2): the heads
read a detached copy of the trunk tensor, and each head runs its forward and backward in turn, its gradient
accumulating in that copy's ``.grad``, so one head's activations are alive at a time; the trunk then gets one
backward.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model.layers import Block, init_weights
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective, backward, shifted_labels
from foresight.ops import linear_cross_entropy


@dataclass
class MTPConfig:
    """Meta MTP with n heads in total (head 0 is the model's last block)."""

    weight: float | list = 1.0  # loss weight of heads 1..n-1: a number or a schedule [[{step: s}, value], ...]
    n: int = 4  # tokens predicted per position, the next one included

    def __post_init__(self) -> None:
        from foresight.model.limits import MAX_MTP_N, check_int

        if self.n == 1:
            raise ForesightError(f"mtp.n must be >= 2 (n = 1 is plain NTP), got {self.n}")
        check_int(self.n, "mtp.n", 2, MAX_MTP_N)  # each head is a full block: bounded before any is built


class MTP(Objective):
    name = "mtp"
    head_metric = "mtp_head"
    draft_order = 0  # first choice for --speculative auto: n-1 parallel heads draft in one step
    draft_heads = "MTP heads"
    cached_heads = True

    @classmethod
    def paper_label(cls, spec: dict) -> str:
        return f"MTP-{spec.get('n', MTPConfig.n)}"  # n counts head 0, as the paper's MTP-n

    def __init__(self, cfg: MTPConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleList(Block(model_cfg) for _ in range(cfg.n - 1))  # heads 1 .. n-1
        init_weights(self.heads, model_cfg.init_std)

    @property
    def lookahead(self) -> int:
        return self.cfg.n

    def compute(self) -> Compute:
        # heads 1..n-1: one block each, each applying the shared output head once more
        return Compute(sum(p.numel() for p in self.heads.parameters()), len(self.heads), len(self.heads))

    def drafter(self, model, n_draft, stacked, vocab, forms):
        return forms.MTPDrafter(model, self.heads, n_draft, stacked, vocab)

    def warm_start(self, model, scale: float = 1.0) -> None:
        # Every head is a block reading the last block's input, so a copy of the last block is a working head.
        last = model.layers[-1].state_dict()
        for head in self.heads:
            head.load_state_dict(copy.deepcopy(last))

    def head_states(self, out, batch: Batch, model):
        for head in self.heads:  # head k reads the last block's input (B, T, D), through the shared final norm
            yield head(out.last_input, out.cos, out.sin), model.norm

    def count(self, batch: Batch) -> torch.Tensor:
        return (shifted_labels(batch, 0) != IGNORE_INDEX).sum()

    def _head_sum(self, k: int, out, batch: Batch, model) -> torch.Tensor:
        """Loss sum of head k (1 .. n-1), which reads the last block's input and predicts x[t+1+k]."""
        h = model.norm(self.heads[k - 1](out.last_input, out.cos, out.sin))  # (B, T, D)
        labels = shifted_labels(batch, k)  # (B, T)
        return linear_cross_entropy(h.reshape(-1, h.shape[-1]), model.lm_head.weight, labels.reshape(-1)).sum()

    def forward(self, out, batch: Batch, model) -> LossOutput:
        total = out.hidden.new_zeros((), dtype=torch.float32)
        metrics = {}
        count = self.count(batch)
        for k in range(1, self.cfg.n):
            head_sum = self._head_sum(k, out, batch, model)
            total = total + head_sum
            metrics[f"{self.head_metric}{k}"] = head_sum.detach() / count.clamp(min=1)
        return LossOutput(total, count, metrics)

    def forward_backward(self, out, batch: Batch, model, scale: float,
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> LossOutput:
        """One head at a time (§2): forward, backward of ``scale · head_sum`` into ``out.last_input.grad`` (a
        leaf) and the head's parameters, then the head's graph is dropped."""
        total = out.hidden.new_zeros((), dtype=torch.float32)
        metrics = {}
        count = self.count(batch)
        for k in range(1, self.cfg.n):
            with autocast():
                head_sum = self._head_sum(k, out, batch, model)
            backward(head_sum * scale)
            total = total + head_sum.detach()
            metrics[f"{self.head_metric}{k}"] = head_sum.detach() / count.clamp(min=1)
        return LossOutput(total, count, metrics)
