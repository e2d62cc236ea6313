"""Drafters for self-speculative decoding: a model's own MTP heads or DS-MTP modules propose the next tokens.

A drafter sees, after every verification, the trunk outputs of the positions just committed and the token
sequence (committed tokens plus the *pending* token: head 0's greedy choice for the next position, already
exact). It returns ``n_draft`` guesses for the tokens after the pending one. Drafts only decide speed; the
verifier decides the output, so a bad draft can never change it.

Position bookkeeping, per row: ``seq`` holds x[0..N-1] committed and x[N] pending (entries past N are
padding); the trunk's KV cache covers positions 0..N-1; ``out`` (B, m, ·) covers positions pos0 .. pos0+m-1,
of which [pos0, N-1] are the newly committed ones. ``n`` = N and ``pos0`` are ints when every row is alike
(B = 1: then ``seq`` is exactly (B, N+1) and m = N - pos0), or (B,) tensors when rows advance independently
(batched decoding: each row accepted its own number of drafts). Indexing goes through
``foresight.generate.rows``, so one code path serves both. When rows finish, the decoder drops them from the
batch and calls ``keep_rows`` so that a drafter drops their state too.
"""

from __future__ import annotations

import torch
from torch import nn

from foresight.generate.rows import Index, clamp0, longest, pick, window
from foresight.generate.stacked import StackedBlocks
from foresight.model import KVCache


class Drafter:
    """Interface: ``reset()`` before a sequence, ``propose(out, seq, pos0, n) -> (B, n_draft)`` after each step,
    ``keep_rows(rows)`` when only those batch rows go on (a drafter with per-row state must override it)."""

    n_draft: int = 0
    name: str = "drafter"

    def reset(self) -> None:
        pass

    def keep_rows(self, rows: torch.Tensor) -> None:
        pass

    def propose(self, out, seq: torch.Tensor, pos0: Index, n: Index) -> torch.Tensor:
        raise NotImplementedError


class DraftVocab:
    """A reduced draft vocabulary (FR-Spec; EAGLE-3): drafts are the argmax over ``ids`` (V',) only, through the
    matching rows of the shared output head, copied once: (V', D). Verification still scores the full
    vocabulary, so this changes speed and acceptance, never the output. Rebuild it after changing the head."""

    def __init__(self, model, ids: torch.Tensor) -> None:
        self.ids = ids.long().to(model.lm_head.weight.device)
        self.weight = model.lm_head.weight.detach()[self.ids].contiguous()  # (V', D)


def _greedy(model, h: torch.Tensor, norm: nn.Module, vocab: DraftVocab | None = None) -> torch.Tensor:
    """Argmax of the shared output head on the normalised hidden state: (..., D) -> (...) full-vocabulary ids."""
    if vocab is None:
        return model.lm_head(norm(h)).argmax(dim=-1)
    return vocab.ids[(norm(h) @ vocab.weight.T).argmax(dim=-1)]  # (..., V') scores -> ids


def _tile(i: Index, n: int) -> Index:
    """A per-row index for n stacked copies of the batch (rows ordered copy-major, as ``StackedBlocks``)."""
    return i.repeat(n) if isinstance(i, torch.Tensor) else i


class MTPDrafter(Drafter):
    """Meta MTP heads 1..n-1 (Gloeckle et al. 2024 §3.2; Stern et al. 2018 blockwise parallel decoding).

    Head k is a full block on the input of the trunk's last block (``last_input``), then the shared norm and
    output head; at the last committed position N-1 it predicts x[N+k], so heads 1..n-1 draft x[N+1..N+n-1]
    in parallel while head 0 (the trunk) gave the pending x[N]. Each head attends over its own keys and values
    of all earlier positions, so it keeps its own KV cache; ``last_input`` at a position depends only on the
    committed tokens up to it, so every cached entry of a committed position is exact. Only the per-row path
    truncates: there ``out`` is padded past a row's N to the longest row, and those positions are dropped.
    """

    name = "mtp"

    def __init__(self, model, heads: nn.ModuleList, n_draft: int | None = None, stacked: bool = True,
                 vocab: DraftVocab | None = None) -> None:
        self.model, self.heads, self.vocab = model, list(heads)[: n_draft or len(heads)], vocab
        self.n_draft = len(self.heads)
        # The heads all read the same input: one batched computation (generate/stacked.py) instead of n-1.
        self.stack = StackedBlocks(self.heads) if stacked else None
        self.caches: list[KVCache] = []

    def reset(self) -> None:
        self.caches = [KVCache() for _ in (self.heads if self.stack is None else [None])]

    def keep_rows(self, rows: torch.Tensor) -> None:
        if self.stack is not None and self.caches[0].k is not None:
            batch = self.caches[0].k.shape[0] // self.stack.n  # the stacked cache's rows are head·B + b
            rows = (torch.arange(self.stack.n, device=rows.device)[:, None] * batch + rows).flatten()
        for cache in self.caches:
            cache.keep_rows(rows)

    def propose(self, out, seq: torch.Tensor, pos0: Index, n: Index) -> torch.Tensor:
        x = out.last_input  # (B, m, D): positions pos0 .. pos0 + m - 1, committed below N
        cos, sin = self.model.rotary(x.shape[1], x.device, pos0)
        copies = 1 if self.stack is None else self.stack.n
        if not isinstance(pos0, torch.Tensor):  # (per row, checking would cost a sync per step: the tests do)
            assert all(c.offset == pos0 for c in self.caches), "MTP head cache out of step with the trunk"
        last = n - pos0 - 1  # index of position N-1 in x
        if self.stack is not None:
            h = self.stack(x, cos, sin, self.caches[0]).transpose(0, 1)  # (B, n-1, m, D)
            top = pick(h, last, dim=2)  # (B, n-1, D)
        else:
            # Head k at position N-1, one head at a time: (B, D) each.
            top = torch.stack([pick(head(x, cos, sin, cache), last) for head, cache in zip(self.heads, self.caches)],
                              dim=1)
        # Positions past a row's N (other rows' accepted drafts: padding here) are dropped from the caches; the
        # entries kept depend on committed tokens only. Without padding (int path) this cuts nothing.
        for cache in self.caches:
            cache.truncate(_tile(n, copies))
        # One output-head product for all heads (they share the norm and the unembedding): (B, n-1, D) -> (B, n-1).
        return _greedy(self.model, top, self.model.norm, self.vocab)


class DSMTPDrafter(Drafter):
    """DeepSeek-V3 sequential MTP modules (§2.2, and §5.4.3 for their use in speculative decoding).

    Module k at position j reads h_{k-1}[j] and the embedding of x[j+k] and predicts x[j+k+1]. At the last
    position N-1 module 1 reads the pending x[N] and drafts x[N+1]; module k reads the draft x[N+k-1] and
    drafts x[N+k]. Module k's attention needs its own keys/values at every earlier position, and at positions
    j > N-k those depend on drafts, so after drafting each module's cache is truncated back to its *exact*
    positions j <= N-k. The next round re-runs module k from there; the one hidden state of module k-1 it
    needs from before module k-1's own restart (position N-k+1) is kept as a carry.
    """

    name = "dsmtp"

    def __init__(self, model, dsmtp, n_draft: int | None = None, vocab: DraftVocab | None = None) -> None:
        self.model, self.modules, self.vocab = model, list(dsmtp.layers)[: n_draft or len(dsmtp.layers)], vocab
        self.dsmtp = dsmtp  # its h0 and norm_of say what module 1 reads and which norm precedes the head
        self.n_draft = len(self.modules)
        self.caches: list[KVCache] = []
        self.carry: list[torch.Tensor | None] = []

    def reset(self) -> None:
        self.caches = [KVCache() for _ in self.modules]
        self.carry = [None] * len(self.modules)  # carry[k-1]: output of module k kept for module k+1

    def keep_rows(self, rows: torch.Tensor) -> None:
        for cache in self.caches:
            cache.keep_rows(rows)
        self.carry = [None if c is None else c[rows] for c in self.carry]

    def propose(self, out, seq: torch.Tensor, pos0: Index, n: Index) -> torch.Tensor:
        per_row = isinstance(n, torch.Tensor)
        h_prev = self.dsmtp.h0(out)  # (B, m, D): level 0 from pos0, committed below N
        prev_start = pos0
        # x[0..N] then the drafts: the sequence the modules assume (a padded copy per row on the per-row path)
        hyp = seq.clone() if per_row else seq
        old_carry = list(self.carry)
        drafts = []
        for k, (module, cache) in enumerate(zip(self.modules, self.caches), start=1):
            s = cache.offset  # module k recomputes positions [s, N-1]; s <= prev_start
            if per_row and not isinstance(s, torch.Tensor):
                s = torch.full_like(n, s)  # a fresh cache: every row from 0
            span = longest(n - s)  # positions computed per row (rows with fewer: padding after their N-1)
            shift = prev_start - s  # 0 or 1 per row: position s comes from the carry
            if per_row:  # (no check here: a sync per module; the tests recompute every row's drafts from scratch)
                carry = old_carry[k - 2] if k > 1 and old_carry[k - 2] is not None else h_prev[:, :1]
                h_in = window(torch.cat([carry, h_prev], dim=1), 1 - shift, span)  # (B, span, D)
            else:
                h_in = torch.cat([old_carry[k - 2], h_prev], dim=1) if shift > 0 else h_prev  # carry: [s, prev_start)
                assert h_in.shape[1] == n - s, "DS-MTP drafter lost track of positions"
            tokens = window(hyp, s + k, span)  # x[j+k] for j in [s, N-1]: (B, span)
            cos, sin = self.model.rotary(span, seq.device, s)
            h = module(h_in, self.model.embed_tokens(tokens), cos, sin, cache)  # (B, span, D)
            # drafts x[N+k] from position N-1
            d = _greedy(self.model, pick(h, n - s - 1), self.dsmtp.norm_of(k, self.model), self.vocab)
            drafts.append(d)
            if per_row:
                hyp.scatter_(1, (n + k)[:, None], d[:, None])
            else:
                hyp = torch.cat([hyp, d[:, None]], dim=1)
            exact = clamp0(n - k + 1)  # positions j <= N-k read committed/pending tokens only
            cache.truncate(exact)
            keep_from = clamp0(n - k)  # where module k+1 restarts next round
            # The carry: module k's state at position N-k (none while N-k < 0; on the per-row path such a row
            # keeps a placeholder that its shift of 0 never reads).
            self.carry[k - 1] = pick(h, keep_from - s)[:, None] if per_row else h[:, keep_from - s : exact - s]
            h_prev, prev_start = h, s
        return torch.stack(drafts, dim=1)  # (B, D)
