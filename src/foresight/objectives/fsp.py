"""Future Summary Prediction, hand-crafted bag-of-tokens form (FSP-BCE; FSP paper §3 "Handcrafted summaries":
Mahajan et al. 2025, "Beyond Multi-Token Prediction: Pretraining LLMs with Future Summaries"; docs/objectives.md).

An auxiliary head ``W_fsp`` (V x D, untied) reads the same final hidden state h_t as NTP and predicts, for every
vocabulary item v independently, whether v occurs among the ``window`` tokens after the next one,
x[t+2 .. t+1+window] (the next token is NTP's). The target is the multi-hot bag a_t in {0, 1}^V and the loss of a
position is the sum over the vocabulary of the binary cross-entropy of sigmoid(z_v), z = W_fsp h_t:

    l_t = Σ_v BCE(z_v, a_v) = Σ_v softplus(z_v) − Σ_{v in S_t} z_v        (BCE(z, a) = softplus(z) − a·z)

with S_t the set of distinct ids in the window. The second form needs only the (N, window) ids, never the N x V
multi-hot tensor. Positions trained: those whose next-token label is trained (NTP's rows); the window stops at the
end of the stream, at an ignored or negative id and at a document boundary (``Batch.horizon``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective, hidden_rows, shifted_labels
from foresight.ops.row_chunks import ROW_CHUNK, map_row_chunks

MAX_WINDOW = 127  # the loader keeps 128 look-ahead tokens (data/loader.py RESERVE); FSP reads window + 1


@dataclass
class FSPConfig:
    """Future summary prediction, BCE form (FSP paper §3; options in docs/objectives.md)."""

    weight: float | list = 1.0  # loss weight: a number, or a schedule [[{step: s}, value], ...] (objectives/weights.py)
    window: int = 16  # τ: the bag holds the distinct ids of x[t+2 .. t+1+window]
    reduction: str = "sum"  # over the vocabulary: "sum" (starts at V·ln 2 per position) or "mean" (ln 2)
    ignore_index: int = IGNORE_INDEX  # an id that is never in a bag (e.g. a pad id)

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 1 <= self.window <= MAX_WINDOW:
            raise ForesightError(f"FSP window must be an integer in 1 .. {MAX_WINDOW}, got {self.window!r}")
        if self.reduction not in ("sum", "mean"):
            raise ForesightError(f"FSP reduction must be 'sum' or 'mean', got {self.reduction!r}")


@torch.no_grad()
def fsp_bags(tokens: torch.Tensor, seq_len: int, window: int, *, ignore_index: int = IGNORE_INDEX,
             horizon: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The bag of every position as sparse ids: ``ids`` (B, T, window) long and ``keep`` (B, T, window) bool.

    Slot j of position t reads stream index t + 2 + j (offset d = j + 1 from the next token). ``keep`` marks the
    first occurrence of each id that counts: inside the stream, not negative, not ``ignore_index``, at an offset
    no later than ``horizon[b, t]`` when given. Other slots hold id 0 and keep False.
    """
    b, length = tokens.shape
    offsets = torch.arange(1, window + 1, device=tokens.device)  # (W,): d = 1 .. window
    index = torch.arange(seq_len, device=tokens.device)[:, None] + 1 + offsets  # (T, W) stream indices
    inside = index < length  # (T, W)
    ids = tokens[:, index.clamp(max=length - 1)]  # (B, T, W)
    valid = inside & (ids >= 0) & (ids != ignore_index)  # (B, T, W)
    if horizon is not None:
        valid &= offsets <= horizon[..., None]
    ids = torch.where(valid, ids, torch.full_like(ids, -1))
    # Distinct ids: sort each bag, keep an id where it differs from its left neighbour (invalid slots sort first).
    ids, _ = torch.sort(ids, dim=-1)
    first = torch.ones_like(valid)
    first[..., 1:] = ids[..., 1:] != ids[..., :-1]
    keep = first & (ids >= 0)
    return ids.clamp(min=0), keep


def _bce_rows(hidden: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(n,) Σ_v softplus(z_v) − Σ_kept z_id with z = hidden @ weight.T, in fp32 at least (fp64 stays fp64)."""
    z = hidden @ weight.t()  # (n, V)
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    return F.softplus(z).sum(-1) - (z.gather(-1, ids) * keep).sum(-1)


def fsp_bce_rows(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor,
                 chunk: int = ROW_CHUNK) -> torch.Tensor:
    """(n,) FSP-BCE loss of each row: hidden (n, D), weight (V, D), ids / keep (n, K) from ``fsp_bags``.

    Rows go through in chunks whose (chunk, V) logits are recomputed in the backward (activation checkpointing),
    so memory stays O(chunk · V) however many rows there are.
    """
    return map_row_chunks(_bce_rows, (hidden, ids, keep), (weight,), chunk)  # row arguments first, then shared


class FSP(Objective):
    """An extra, untied head ``W_fsp`` (V x D, no bias) on the final hidden states, trained with FSP-BCE."""

    name = "fsp"

    def __init__(self, cfg: FSPConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(model_cfg.hidden_size, model_cfg.vocab_size, bias=False)
        nn.init.normal_(self.head.weight, std=model_cfg.init_std)

    @classmethod
    def paper_label(cls, spec: dict) -> str:
        return "FSP-BCE"

    @property
    def lookahead(self) -> int:
        return self.cfg.window + 1  # the last position's bag reads x[T + window]

    def compute(self) -> Compute:
        return Compute(head_uses=1)  # W_fsp on the final hidden states: one more V×D head, no block

    def _rows(self, batch: Batch) -> torch.Tensor:
        return shifted_labels(batch, 0) != IGNORE_INDEX  # (B, T): NTP's trained positions

    def count(self, batch: Batch) -> torch.Tensor:
        return self._rows(batch).sum()

    def rows_needed(self, batch: Batch) -> torch.Tensor | None:
        return batch.loss_mask  # with a loss mask, only its rows are read (forward)

    def forward(self, out, batch: Batch, model) -> LossOutput:
        rows = self._rows(batch)  # (B, T)
        ids, keep = fsp_bags(batch.tokens, batch.seq_len, self.cfg.window, ignore_index=self.cfg.ignore_index,
                             horizon=batch.horizon)  # (B, T, W)
        hidden = hidden_rows(out, rows)  # (n, D), row-major like ids[rows]
        losses = fsp_bce_rows(hidden, self.head.weight, ids[rows], keep[rows])  # (n,)
        if self.cfg.reduction == "mean":
            losses = losses / self.head.weight.shape[0]  # the mean over the V binary problems
        return LossOutput(losses.sum(), rows.sum())
