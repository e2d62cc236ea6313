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

from foresight.errors import ForesightError
from foresight.objectives.base import IGNORE_INDEX, Batch, LossOutput, Objective
from foresight.ops import linear_soft_cross_entropy
from foresight.ops.kernels import INDEX_DTYPES, resolve_impl

MAX_SLOTS = 128  # K = min(window, MAX_SLOTS) target slots per position
_HALF_MAX = 65504  # largest finite fp16 value: the paper's fp16 scores overflow past it


def _check_modes(window: int, scores: str, normalize: str | None = None) -> None:
    if window < 1:
        raise ForesightError(f"TOP window must be >= 1, got {window}")
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
    ``impl``: ``"torch"`` is the code below, O(B · seq_len · K log K) time and O(B · seq_len · K) memory;
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
    k = min(window, MAX_SLOTS)
    device = tokens.device
    # The K slots start at the first scorable upcoming token (offset s_t), not at t + 1: then every id the
    # dense target gives weight to sits within K = 128 offsets of the nearest one (farther ones have
    # exp(-(d - d_min)) < exp(-128), which is 0 in fp32), so the sparse target equals the dense one even after
    # a long run of ignored ids.
    start = _first_scorable_offset(tokens, seq_len, ignore_index)  # (B, T): offset s_t of the first scorable token
    t_next = torch.arange(seq_len, device=device) + 1  # (T,): index of the next token
    offsets = start[..., None] + torch.arange(k, device=device)  # (B, T, K): absolute offset d of each slot
    index = t_next[None, :, None] + offsets  # (B, T, K): stream index of each slot
    in_window = (offsets < window) & (index < length)
    gathered = tokens.gather(1, index.clamp(max=length - 1).reshape(b, -1)).reshape(b, seq_len, k)
    upcoming = torch.where(in_window, gathered, torch.full_like(gathered, -1))  # (B, T, K)
    scorable = (upcoming >= 0) & (upcoming != ignore_index)
    if horizon is not None:
        scorable &= offsets <= horizon[..., None]  # (B, T, K): offsets, not slots (they differ when s_t > 0)

    # First occurrence within the row: a stable sort groups equal ids in offset order, so the first of each
    # group is the earliest offset. Unscorable slots get distinct negative keys so they never group.
    slot = torch.arange(k, device=device)
    keys = torch.where(scorable, upcoming, -1 - slot)
    sorted_keys, order = torch.sort(keys, dim=-1, stable=True)
    first_sorted = torch.ones_like(sorted_keys, dtype=torch.bool)
    first_sorted[..., 1:] = sorted_keys[..., 1:] != sorted_keys[..., :-1]
    first = torch.empty_like(first_sorted).scatter_(-1, order, first_sorted)
    scored = first & scorable  # (B, T, K)

    if scores == "exact":
        score = -offsets.float()
    else:
        score = (window - offsets).to(torch.float16).float()
    logits = score.masked_fill(~scored, float("-inf"))  # (B, T, K)
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with nothing scored: all 0
    ids = torch.where(scored, upcoming, torch.zeros_like(upcoming))
    return ids, weights


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
    rows = linear_soft_cross_entropy(hidden.reshape(-1, d), weight, ids.reshape(-1, ids.shape[-1]), w.reshape(-1, w.shape[-1]))
    total = (rows * has_target).sum()
    count = has_target.sum() if normalize == "valid" else torch.tensor(b * t, device=hidden.device)
    return total / count.clamp(min=1)


@dataclass
class TOPConfig:
    """Token order prediction head (TOP paper §3; options in docs/objectives.md)."""

    weight: float | list = 1.0  # loss weight: a number, or a schedule [[step, value], ...]
    window: int = 4096  # W: how many upcoming tokens are ranked
    scores: str = "exact"  # "exact" (-d) or "paper" (fp16-rounded W - d, as the reference runs)
    normalize: str = "valid"  # "valid": mean over positions with a target; "paper": over all positions
    ignore_index: int = IGNORE_INDEX  # an id that never scores (e.g. a pad id)

    def __post_init__(self) -> None:
        _check_modes(self.window, self.scores, self.normalize)


class TOP(Objective):
    """An extra, untied unembedding ``W_top`` (V x D, no bias) on the same final hidden states as NTP."""

    name = "top"

    def __init__(self, cfg: TOPConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(model_cfg.hidden_size, model_cfg.vocab_size, bias=False)
        nn.init.normal_(self.head.weight, std=model_cfg.init_std)

    @property
    def lookahead(self) -> int:
        return min(self.cfg.window, MAX_SLOTS)

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

    def forward(self, out, batch: Batch, model) -> LossOutput:
        ids, w, rows = self._targets(batch)
        has_target = (w > 0).any(-1) & rows
        d, k = out.hidden.shape[-1], ids.shape[-1]
        losses = linear_soft_cross_entropy(out.hidden.reshape(-1, d), self.head.weight, ids.reshape(-1, k), w.reshape(-1, k))
        return LossOutput((losses * has_target.reshape(-1)).sum(), rows.sum())
