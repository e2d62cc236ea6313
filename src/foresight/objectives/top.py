"""Token Order Prediction (TOP paper §3; docs/objectives.md): rank the upcoming tokens by how soon they appear.

Target for position t: every distinct id among the next ``window`` tokens scores ``-d`` (d = offset of its
first occurrence, 0 for the next token); the target distribution is the softmax of those scores, and the loss
is ListNet top-one: cross-entropy of ``softmax(W_top h_t)`` against that target.

We compute it in sparse form (docs/objectives.md, "The sparse target"): softmax over -d is shift-invariant and
exp(-(d - d_min)) underflows to exactly 0 in fp32 once d - d_min >= 104, so K = min(window, 128) upcoming
positions, counted from the nearest scorable token, carry the whole target. The target is an (N, K) pair
(ids, weights); no N x V tensor is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective, hidden_rows
from foresight.ops import linear_soft_cross_entropy
from foresight.ops.kernels import INDEX_DTYPES, resolve_impl

MAX_SLOTS = 128  # K = min(window, MAX_SLOTS) target slots per position
_HALF_MAX = 65504  # largest finite fp16 value: the paper's fp16 scores overflow past it


def _check_modes(window: int, scores: str, normalize: str | None = None) -> None:
    from foresight.model.limits import MAX_TOP_WINDOW, check_int

    check_int(window, "TOP window", 1, MAX_TOP_WINDOW)
    if scores not in ("exact", "paper"):
        raise ForesightError(f"TOP scores must be 'exact' or 'paper', got {scores!r}")
    if scores == "paper" and window > _HALF_MAX:
        raise ForesightError(f"TOP scores='paper' stores window - d in fp16, so window must be <= {_HALF_MAX}")
    if normalize is not None and normalize not in ("valid", "paper"):
        raise ForesightError(f"TOP normalize must be 'valid' or 'paper', got {normalize!r}")


def _first_scorable_offset(tokens: torch.Tensor, seq_len: int, ignore_index: int) -> torch.Tensor:
    """(B, seq_len) long: offset d >= 0 from t + 1 of the first scorable token at or after t + 1 (L - t - 1 if
    there is none: past the stream's end)."""
    length = tokens.shape[1]
    scorable_stream = (tokens >= 0) & (tokens != ignore_index)  # (B, L)
    positions = torch.arange(length, device=tokens.device)
    candidates = torch.where(scorable_stream, positions, torch.full_like(positions, length))
    next_scorable = candidates.flip(-1).cummin(-1).values.flip(-1)  # (B, L): first scorable index >= i
    return next_scorable[:, 1 : seq_len + 1] - (torch.arange(seq_len, device=tokens.device) + 1)


@torch.no_grad()
def top_has_target(tokens: torch.Tensor, seq_len: int, window: int, *, ignore_index: int = IGNORE_INDEX,
                   horizon: torch.Tensor | None = None) -> torch.Tensor:
    """(B, seq_len) bool: positions whose TOP target is not empty, i.e. ``(top_targets(...)[1] > 0).any(-1)``,
    in O(B · L) without building the targets (the trainer needs these counts before the forward pass).

    A row has a target iff its first scorable upcoming token lies inside the window, the stream and the horizon.
    """
    start = _first_scorable_offset(tokens, seq_len, ignore_index)  # (B, T)
    t_next = torch.arange(seq_len, device=tokens.device) + 1
    ok = (start < window) & (t_next + start < tokens.shape[1])
    if horizon is not None:
        ok &= start <= horizon
    return ok


@torch.no_grad()
def top_targets(
    tokens: torch.Tensor, seq_len: int, window: int, *, ignore_index: int = IGNORE_INDEX, scores: str = "exact",
    horizon: torch.Tensor | None = None, impl: str = "auto", kernel=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse TOP targets.

    tokens: (B, L) long with L >= seq_len + 1; position t looks at ``tokens[b, t+1 : min(t+1+window, L)]``.
    Returns ``ids`` (B, seq_len, K) long and ``weights`` (B, seq_len, K) fp32, K = min(window, 128): slot j
    holds the token at offset s_t + j (s_t = offset of the first scorable upcoming token) if that is the first
    occurrence of a scored id (not ``ignore_index``, not negative), with weight softmax(score) over the row's
    scored slots; other slots have id 0 and weight 0.
    ``scores="exact"``: score = -d. ``scores="paper"``: score = float(half(window - d)), which reproduces the
    fp16 rounding of the reference runs (at window 4096, d = 0 and d = 1 tie).
    ``horizon`` (B, seq_len) long, optional: slots past offset ``horizon[b, t]`` (the next end of document)
    never score, so the ranking stops at a document boundary (see ``Batch.horizon``).
    ``impl``: ``"torch"`` is the code below, O(B · L log L + B · seq_len · K) time (one sort per stream, see
    ``previous_occurrence``) and O(B · seq_len · K) memory;
    ``"triton"`` the O(B · seq_len · K) kernel of ``ops/kernels/top_targets_triton.py`` (the same ids, the same
    weights to fp32 rounding); ``"auto"`` the kernel for CUDA tensors when Triton is installed. ``kernel``: the
    kernel's tiles (a ``top_targets_triton.TargetKernelConfig``; None: its defaults).
    """
    _check_modes(window, scores)
    b, length = tokens.shape
    if length < seq_len + 1:
        raise ValueError(f"tokens must have at least seq_len + 1 = {seq_len + 1} columns, got {length}")
    if horizon is not None and horizon.shape != (b, seq_len):
        raise ValueError(f"horizon must have shape (B, seq_len) = {(b, seq_len)}, got {tuple(horizon.shape)}")
    given = (tokens,) if horizon is None else (tokens, horizon)
    if resolve_impl(impl, *given, dtypes=INDEX_DTYPES) == "triton":
        from foresight.ops.kernels.top_targets_triton import triton_top_targets  # imports Triton

        return triton_top_targets(tokens, seq_len, window, ignore_index=ignore_index, scores=scores, horizon=horizon,
                                  config=kernel)
    start = _first_scorable_offset(tokens, seq_len, ignore_index)  # (B, T): offset s_t of the first scorable token
    rows_b = torch.arange(b, device=tokens.device)[:, None].expand(b, seq_len)  # (B, T)
    rows_t = torch.arange(seq_len, device=tokens.device)[None, :].expand(b, seq_len)  # (B, T)
    return _targets_at(tokens, previous_occurrence(tokens), rows_b, rows_t, start, min(window, MAX_SLOTS), window,
                       ignore_index=ignore_index, scores=scores, horizon=horizon)


@torch.no_grad()
def previous_occurrence(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) long: for each stream index i, the largest i' < i with ``tokens[b, i'] == tokens[b, i]``, or -1.

    One stable sort per stream (O(L log L)) groups equal ids in index order, so each element's predecessor in
    its group is its previous occurrence. Every TOP row of the stream then reads it instead of sorting its own
    K slots: slot j is the first occurrence of its id in the row iff its previous occurrence lies before the
    row's first slot (O(N · K) for N rows).
    """
    keys, order = torch.sort(tokens, dim=-1, stable=True)  # (B, L)
    prev_sorted = torch.full_like(order, -1)
    prev_sorted[:, 1:] = torch.where(keys[:, 1:] == keys[:, :-1], order[:, :-1], -1)
    return torch.empty_like(order).scatter_(-1, order, prev_sorted)


def _targets_at(tokens: torch.Tensor, prev: torch.Tensor, rows_b: torch.Tensor, rows_t: torch.Tensor,
                start: torch.Tensor, k: int, window: int, *, ignore_index: int, scores: str,
                horizon: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of the positions (rows_b, rows_t) (any shape S): ``ids`` and ``weights`` of shape (*S, k).

    tokens and prev (B, L); start (B, T) the offset of each position's first scorable token; horizon (B, T) or
    None. Slot j of position t holds stream index t + 1 + s_t + j: the K slots start at the first scorable
    upcoming token, not at t + 1, so every id the dense target weights sits within K = 128 offsets of the
    nearest one (farther ones have exp(-(d - d_min)) < exp(-128), which is 0 in fp32) even after a long run of
    ignored ids.
    """
    length = tokens.shape[1]
    s_t = start[rows_b, rows_t]  # (*S,)
    base = rows_t + 1 + s_t  # (*S,): stream index of slot 0
    slot = torch.arange(k, device=tokens.device)
    offsets = s_t[..., None] + slot  # (*S, K): offset d of each slot
    index = base[..., None] + slot  # (*S, K): stream index of each slot
    in_window = (offsets < window) & (index < length)
    flat = (rows_b[..., None] * length + index.clamp(max=length - 1)).reshape(-1)  # into the (B·L,) streams
    upcoming = tokens.reshape(-1)[flat].reshape(index.shape)  # (*S, K)
    scorable = in_window & (upcoming >= 0) & (upcoming != ignore_index)
    if horizon is not None:
        scorable &= offsets <= horizon[rows_b, rows_t][..., None]  # offsets, not slots (they differ when s_t > 0)
    # First occurrence within the row: the id's previous occurrence lies before slot 0. An earlier occurrence
    # inside the row is scorable too (same id, smaller offset: inside the window and the horizon).
    first = prev.reshape(-1)[flat].reshape(index.shape) < base[..., None]
    scored = first & scorable  # (*S, K)

    if scores == "exact":
        score = -offsets.float()
    else:
        score = (window - offsets).to(torch.float16).float()
    logits = score.masked_fill(~scored, float("-inf"))  # (*S, K)
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with nothing scored: all 0
    ids = torch.where(scored, upcoming, torch.zeros_like(upcoming))
    return ids, weights


@torch.no_grad()
def top_targets_rows(tokens: torch.Tensor, rows: torch.Tensor, window: int, *, ignore_index: int = IGNORE_INDEX,
                     scores: str = "exact", horizon: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_targets`` of the positions where ``rows`` (B, T) bool is true only, in row-major order.

    Returns ``ids`` (n, K') and ``weights`` (n, K'), n = rows.sum(), equal to ``top_targets(...)[rows]`` in
    their first K' slots; K' = min(window, 128, L − 1) drops slots that lie past the stream's end for every
    position (their weight is always 0). For tasks whose loss reads a few positions (star graph: the answer
    path, l of P + l − 1), this is the only target work done.
    """
    _check_modes(window, scores)
    b, seq_len = rows.shape
    if tokens.shape[0] != b or tokens.shape[1] < seq_len + 1:
        raise ValueError(f"rows {tuple(rows.shape)} does not fit tokens {tuple(tokens.shape)}")
    start = _first_scorable_offset(tokens, seq_len, ignore_index)  # (B, T)
    rows_b, rows_t = rows.nonzero(as_tuple=True)  # (n,), (n,)
    k = min(window, MAX_SLOTS, tokens.shape[1] - 1)
    return _targets_at(tokens, previous_occurrence(tokens), rows_b, rows_t, start, k, window,
                       ignore_index=ignore_index, scores=scores, horizon=horizon)


def top_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    window: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    scores: str = "exact",
    normalize: str = "valid",
) -> torch.Tensor:
    """Mean TOP (ListNet top-one) loss.

    hidden (B, T, D) after the final norm, weight (V, D) the TOP head, tokens (B, L >= T + 1).
    Per position: ``logsumexp(h W^T) - sum_k weights[t, k] (h W^T)[ids[t, k]]``.

    ``normalize="valid"`` (default) averages over positions with at least one scored id: a position with
    nothing upcoming to rank (the end of a stream, an all-padding window) has no target, so it should neither
    contribute nor dilute. ``normalize="paper"`` averages over all B·T positions, as the reference code does.
    """
    _check_modes(window, scores, normalize)
    b, t, d = hidden.shape
    ids, w = top_targets(tokens, t, window, ignore_index=ignore_index, scores=scores)
    has_target = (w > 0).any(-1).reshape(-1)  # (N,)
    rows = linear_soft_cross_entropy(hidden.reshape(-1, d), weight, ids.reshape(-1, ids.shape[-1]),
                                     w.reshape(-1, w.shape[-1]))
    total = (rows * has_target).sum()
    count = has_target.sum() if normalize == "valid" else torch.tensor(b * t, device=hidden.device)
    return total / count.clamp(min=1)


@dataclass
class TOPConfig:
    """Token order prediction head (TOP paper §3; options in docs/objectives.md)."""

    weight: float | list = 1.0  # loss weight: a number, or a schedule [[{step: s}, value], ...] (objectives/weights.py)
    window: int = 4096  # W: how many upcoming tokens are ranked
    scores: str = "exact"  # "exact" (-d) or "paper" (fp16-rounded W - d, as the reference runs)
    normalize: str = "valid"  # "valid": mean over positions with a target; "paper": over all positions
    ignore_index: int = IGNORE_INDEX  # an id that never scores (e.g. a pad id)

    def __post_init__(self) -> None:
        _check_modes(self.window, self.scores, self.normalize)


class TOP(Objective):
    """An extra, untied unembedding ``W_top`` (V x D, no bias) on the same final hidden states as NTP."""

    name = "top"
    draft_order = 2  # the TOP head ranks upcoming tokens; it drafts when a model has no MTP / DS-MTP heads
    draft_heads = "TOP head"

    def __init__(self, cfg: TOPConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(model_cfg.hidden_size, model_cfg.vocab_size, bias=False)
        nn.init.normal_(self.head.weight, std=model_cfg.init_std)

    @property
    def lookahead(self) -> int:
        return min(self.cfg.window, MAX_SLOTS)

    def compute(self) -> Compute:
        return Compute(head_uses=1)  # W_top on the final hidden states: one more V×D head, no block

    def drafter(self, model, n_draft, stacked, vocab, forms):
        return forms.TOPDrafter(model, self.head, n_draft or 3)

    def future_head(self) -> nn.Linear:
        return self.head  # W_top: scores (..., V) ranking the vocabulary by how soon each token follows

    def _targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, w = top_targets(batch.tokens, batch.seq_len, self.cfg.window, ignore_index=self.cfg.ignore_index,
                             scores=self.cfg.scores, horizon=batch.horizon)
        rows = (w > 0).any(-1) if self.cfg.normalize == "valid" else torch.ones_like(w[..., 0], dtype=torch.bool)
        if batch.loss_mask is not None:
            rows = rows & batch.loss_mask
        return ids, w, rows  # (B, T, K), (B, T, K), (B, T)

    def count(self, batch: Batch) -> torch.Tensor:
        # The same rows as _targets, without building the (B, T, K) targets (that happens again in forward).
        if self.cfg.normalize == "valid":
            rows = top_has_target(batch.tokens, batch.seq_len, self.cfg.window, ignore_index=self.cfg.ignore_index,
                                  horizon=batch.horizon)
        else:
            rows = torch.ones(batch.tokens.shape[0], batch.seq_len, dtype=torch.bool, device=batch.tokens.device)
        if batch.loss_mask is not None:
            rows = rows & batch.loss_mask
        return rows.sum()

    def rows_needed(self, batch: Batch) -> torch.Tensor | None:
        return batch.loss_mask  # with a loss mask, targets and logits of its rows only (forward)

    def forward(self, out, batch: Batch, model) -> LossOutput:
        d = out.hidden.shape[-1]
        if batch.loss_mask is not None:
            # Only the trained positions (star graph: l of P + l − 1): targets and logits of those rows alone.
            ids, w = top_targets_rows(batch.tokens, batch.loss_mask, self.cfg.window,
                                      ignore_index=self.cfg.ignore_index, scores=self.cfg.scores,
                                      horizon=batch.horizon)  # (n, K'), (n, K')
            hidden = hidden_rows(out, batch.loss_mask)  # (n, D), row-major like the targets
            losses = linear_soft_cross_entropy(hidden, self.head.weight, ids, w)  # (n,)
            count = (w > 0).any(-1).sum() if self.cfg.normalize == "valid" else batch.loss_mask.sum()
            return LossOutput((losses * (w > 0).any(-1)).sum(), count)
        ids, w, rows = self._targets(batch)
        has_target = (w > 0).any(-1) & rows
        k = ids.shape[-1]
        losses = linear_soft_cross_entropy(out.hidden.reshape(-1, d), self.head.weight, ids.reshape(-1, k),
                                           w.reshape(-1, k))
        return LossOutput((losses * has_target.reshape(-1)).sum(), rows.sum())
