"""Drafting heads on a frozen trunk, trained on cached trunk states over a reduced draft vocabulary (the
benchmarks' helper of ``smollm2_heads.py`` and ``speculative.py``; issue 25 moved it out of the library).

When only the heads train (``train.freeze: trunk``), the trunk's outputs for a fixed token set never change,
so the trunk runs once over every sequence (``cache_trunk``) and the heads train on the cache for as many
steps as wanted: each step costs the heads alone. On SmolLM2 a head block is 1/30 of the trunk's blocks,
so this is what makes head training affordable on a CPU.

Draft vocabulary (FR-Spec, Zhao et al. 2025; EAGLE-3's reduced draft head): a head's draft is an argmax, and
drafts almost always fall among the most frequent tokens, so heads score only the ``V'`` most frequent ids
(rows of the shared output head, (V', D) instead of (V, D): 28M -> 4.7M weights for SmolLM2 at V' = 8192).
Verification stays exact over the full vocabulary, so the output is unchanged; a target outside the draft
vocabulary can never be drafted and is left out of the loss. Training uses the same restricted head.

Heads: those of any objective declaring ``cached_heads`` (``Objective.warm_start`` and ``head_states``): MTP
heads 1..k (Meta MTP §2: a block on the last block's input, predicting x[t+1+k]) or DS-MTP modules 1..D
(DeepSeek-V3 §2.2: module k reads h_{k-1} and the embedding of x[t+k]). The objective runs its own modules, so
the trained heads are ordinary ``TrainableLM`` objectives that the speculative drafters
(``foresight.generate.drafters``) use as they are. Only positions whose target lies in the
generated part of a self-distilled sequence (index >= ``first_target``) are trained: there the target is
exactly the trunk's greedy choice (``benchmarks/distill.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model import TrunkOutput
from foresight.objectives.base import CACHED_HEADS, IGNORE_INDEX, Objective, shifted_labels, unsupported
from foresight.train.schedule import lr_at


def frequent_ids(tokens: torch.Tensor, size: int, vocab_size: int) -> torch.Tensor:
    """The ``size`` most frequent ids of ``tokens`` (ties: lower id first), most frequent first: (size,) long."""
    counts = torch.bincount(tokens.flatten().long(), minlength=vocab_size).double()
    # Stable order: sort by count descending, ties broken by id ascending.
    key = counts * vocab_size - torch.arange(vocab_size, dtype=torch.double)
    return torch.argsort(key, descending=True)[: min(size, vocab_size)]


@dataclass
class TrunkCache:
    """The frozen trunk's outputs over N token sequences of length L, at positions 0 .. L-2 (those whose next
    token is known): ``final`` (the last block's output) and ``last_input`` (its input), (N, L-1, D) fp32 on
    the CPU. ``hidden`` (after the final norm) is recomputed from ``final`` when a batch is drawn."""

    final: torch.Tensor
    last_input: torch.Tensor

    def rows(self, idx: torch.Tensor, model, cos: torch.Tensor, sin: torch.Tensor) -> TrunkOutput:
        final = self.final[idx]
        return TrunkOutput(model.norm(final), final, self.last_input[idx], cos, sin)


@torch.no_grad()
def cache_trunk(model, tokens: torch.Tensor, batch: int = 16) -> TrunkCache:
    """Run the trunk once over ``tokens[:, :-1]`` ((N, L) ids) in batches and keep its states. (Self-distilled
    data brings them from decoding instead: ``distill.greedy_with_states``.)"""
    model.eval()
    parts = [model.trunk(tokens[i : i + batch, :-1]) for i in range(0, tokens.shape[0], batch)]
    return TrunkCache(torch.cat([p.final for p in parts]), torch.cat([p.last_input for p in parts]))


def heads_of(lm, key: str) -> Objective:
    """``lm.objectives[key]`` if its heads can train on cached trunk states, else one line saying why not."""
    if key not in lm.objectives:
        raise ForesightError(f"the model has no objective {key!r} (it has {sorted(lm.objectives)})")
    obj = lm.objectives[key]
    if not obj.cached_heads:
        raise unsupported(obj.name, CACHED_HEADS)
    return obj


def init_from_last_block(lm, key: str, scale: float = 1.0) -> None:
    """Start every head / module block as a copy of the trunk's last block (the usual warm start for drafting
    heads: the block already maps late hidden states to next-token features). A DS-MTP projection starts by
    passing the normalised hidden state h_{k-1} times ``scale`` (the size of the last block's input, so the
    copied block sees inputs of the size it was trained on) and ignoring the token embedding (its weights start
    at zero and learn): the objective's ``warm_start``."""
    heads_of(lm, key).warm_start(lm.model, scale)


def _target_mask(first_target: int | torch.Tensor, t: int, k: int) -> torch.Tensor:
    """(1 or B, T) bool: positions whose depth-k target x[t+1+k] has index >= first_target, one int for every
    row or a (B,) long tensor, one per row: self-distilled rows train on their generated part only, rows of
    real text on every position."""
    pos = torch.arange(t)
    if isinstance(first_target, torch.Tensor):
        return (pos[None, :] + 1 + k) >= first_target[:, None]
    return (pos + 1 + k >= first_target)[None, :]


def _sub_loss(h: torch.Tensor, norm, w_sub: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropies over the draft vocabulary: h (B, T, D), w_sub (V', D), labels (B, T) in 0..V'-1
    or IGNORE_INDEX."""
    logits = norm(h) @ w_sub.T  # (B, T, V')
    wide = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
    return F.cross_entropy(wide, labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def head_losses(lm, key: str, out: TrunkOutput, batch: Batch, w_sub: torch.Tensor, to_sub: torch.Tensor,
                first_target: int | torch.Tensor) -> list[torch.Tensor]:
    """Loss sums per head (MTP) or depth (DS-MTP) over the draft vocabulary, targets at index >= first_target
    (an int, or a (B,) tensor: one per row of the batch)."""
    obj, model = heads_of(lm, key), lm.model
    t = batch.seq_len

    def labels(k: int) -> torch.Tensor:  # (B, T) sub-vocabulary labels of x[t+1+k]
        full = shifted_labels(batch, k)
        sub = torch.where(full >= 0, to_sub[full.clamp(min=0)], IGNORE_INDEX)
        return sub.masked_fill(~_target_mask(first_target, t, k), IGNORE_INDEX)

    # one head / depth at a time: its state h (B, T, D) and the norm before the shared head
    return [_sub_loss(h, norm, w_sub, labels(k))
            for k, (h, norm) in enumerate(obj.head_states(out, batch, model), start=1)]


def _kl_sum(h: torch.Tensor, norm, w_sub: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over masked positions of KL(teacher || student) over the draft vocabulary: h (B, T, D) the head's
    state, teacher (B, T, V') the trunk's logits for the same token (restricted to V' and renormalised, as the
    student is), mask (B, T) bool."""
    student = (norm(h) @ w_sub.T).to(torch.promote_types(h.dtype, torch.float32))  # (B, T, V')
    log_s = F.log_softmax(student, dim=-1)
    log_t = F.log_softmax(teacher.to(log_s.dtype), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, T)
    return kl.masked_fill(~mask, 0.0).sum()


def kl_head_losses(lm, key: str, out: TrunkOutput, batch: Batch, w_sub: torch.Tensor,
                   first_target: int | torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Self-distillation against the trunk's own distribution (Medusa-2 §3.2 / EAGLE: the drafts are judged
    against the base model's argmax, so learn its distribution, not the text): head / depth k at position t
    predicts token t+1+k, and the trunk's logits for that token are its output at position t+k, which the
    cache holds (``out.hidden``, (B, T, D) after the final norm) whatever the text was. So every position with
    t + k < T trains (prompt positions too, on any text), and ``first_target`` (int or (B,)) can still mask the
    early ones. Returns per head / depth the KL sums and the counts of positions they cover."""
    obj, model = heads_of(lm, key), lm.model
    t = out.hidden.shape[1]
    pos = torch.arange(t)
    sums, counts = [], []
    for k, (h, norm) in enumerate(obj.head_states(out, batch, model), start=1):
        with torch.no_grad():  # teacher logits (B, T, V'): position t+k's, zero-padded past the end
            teacher = out.hidden.new_zeros(*out.hidden.shape[:2], w_sub.shape[0])
            teacher[:, : t - k] = out.hidden[:, k:] @ w_sub.T
        mask = _target_mask(first_target, t, k) & (pos < t - k)[None, :]  # (1 or B, T)
        mask = mask.expand(h.shape[0], t)
        sums.append(_kl_sum(h, norm, w_sub, teacher, mask))
        counts.append(mask.sum())
    return sums, counts


def train_heads(lm, key: str, tokens: torch.Tensor, cache: TrunkCache, vocab: torch.Tensor, *, steps: int,
                batch: int, lr: float, first_target: int | torch.Tensor, seed: int = 0, warmup: int = 10,
                log: Callable[[dict], None] | None = None, loss: str = "ce") -> list[dict]:
    """Train ``lm.objectives[key]`` (MTP, DS-MTP: an objective with ``cached_heads``) on the cached trunk states
    of ``tokens`` (N, L); the trunk stays frozen.

    AdamW (no weight decay), the trainer's schedule (``foresight.train.schedule.lr_at``: linear warm-up, then
    cosine to 10 % of ``lr``), gradient clipping at 1. Each step draws
    ``batch`` sequences at random (seeded); ``first_target`` is one int or a (N,) tensor, one per sequence
    (``_target_mask``). ``loss``: "ce" (cross-entropy on the text's tokens) or "kl" (``kl_head_losses``: the
    trunk's own distribution for each target token, from the cache). Returns the log records (per-head mean
    loss).
    """
    if loss not in ("ce", "kl"):
        raise ForesightError(f"loss must be 'ce' or 'kl', got {loss!r}")
    model, obj = lm.model, heads_of(lm, key)
    lm.freeze_trunk()
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    w_sub = model.lm_head.weight.detach()[vocab].contiguous()  # (V', D)
    to_sub = torch.full((model.cfg.vocab_size,), IGNORE_INDEX, dtype=torch.long)
    to_sub[vocab] = torch.arange(len(vocab))
    n, length = tokens.shape[0], tokens.shape[1] - 1  # positions with a known next token
    cos, sin = model.rotary(length, tokens.device)
    g = torch.Generator().manual_seed(seed)
    records, t0 = [], time.perf_counter()
    obj.train()
    for step in range(steps):
        lr_now = lr_at(step, lr=lr, min_lr=0.1 * lr, warmup_steps=warmup, total_steps=steps)  # the trainer's
        for group in opt.param_groups:
            group["lr"] = lr_now
        idx = torch.randperm(n, generator=g)[:batch]
        b = Batch(tokens[idx].long(), length)
        with torch.no_grad():
            out = cache.rows(idx, model, cos, sin)
        ft = first_target[idx] if isinstance(first_target, torch.Tensor) else first_target
        if loss == "kl":
            sums, counts = kl_head_losses(lm, key, out, b, w_sub, ft)
            counts = [c.clamp(min=1) for c in counts]
        else:
            sums = head_losses(lm, key, out, b, w_sub, to_sub, ft)
            counts = [(_count(b, k, to_sub, ft)).clamp(min=1) for k in range(1, len(sums) + 1)]
        total = sum(s / c for s, c in zip(sums, counts))
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        rec = {"step": step + 1, "lr": lr_now, "seconds": time.perf_counter() - t0,
               **{f"loss{k}": float(s.detach() / c) for k, (s, c) in enumerate(zip(sums, counts), start=1)}}
        records.append(rec)
        if log is not None:
            log(rec)
    obj.eval()
    return records


def _count(batch: Batch, k: int, to_sub: torch.Tensor, first_target: int | torch.Tensor) -> torch.Tensor:
    full = shifted_labels(batch, k)
    ok = (full >= 0) & (to_sub[full.clamp(min=0)] >= 0)
    return (ok & _target_mask(first_target, batch.seq_len, k)).sum()


@torch.no_grad()
def draft_accuracy(lm, key: str, tokens: torch.Tensor, cache: TrunkCache, vocab: torch.Tensor,
                   first_target: int, batch: int = 16) -> list[float]:
    """Top-1 accuracy per head / depth over held-out cached sequences (targets at index >= first_target, all
    targets counted, so one outside the draft vocabulary counts as a miss): the teacher-forced acceptance."""
    model, obj = lm.model, heads_of(lm, key)
    w_sub = model.lm_head.weight[vocab]
    n, length = tokens.shape[0], tokens.shape[1] - 1
    cos, sin = model.rotary(length, tokens.device)
    pos = torch.arange(length)
    hits, total = None, None
    for i in range(0, n, batch):
        idx = torch.arange(i, min(i + batch, n))
        b, out = Batch(tokens[idx].long(), length), cache.rows(idx, model, cos, sin)
        hs = list(obj.head_states(out, b, model))  # per head / depth: (h (B, T, D), its norm)
        for k, (h, norm) in enumerate(hs, start=1):
            guess = vocab[(norm(h) @ w_sub.T).argmax(-1)]  # (B, T) full-vocabulary ids
            full = shifted_labels(b, k)
            valid = (full >= 0) & (pos + 1 + k >= first_target)[None, :]
            if hits is None:
                hits, total = [0] * len(hs), [0] * len(hs)
            hits[k - 1] += int(((guess == full) & valid).sum())
            total[k - 1] += int(valid.sum())
    return [h / max(t, 1) for h, t in zip(hits, total)]
