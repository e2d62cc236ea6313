"""Drafters for self-speculative decoding: a model's own MTP heads or DS-MTP modules propose the next tokens.

A drafter sees, after every verification, the trunk outputs of the positions just committed and the token
sequence (committed tokens plus the *pending* token: head 0's greedy choice for the next position, already
exact). It returns ``n_draft`` guesses for the tokens after the pending one. Drafts only decide speed; the
verifier decides the output, so a bad draft can never change it.

Position bookkeeping: the sequence holds x[0..N-1] committed and x[N] pending; the trunk's KV cache covers
positions 0..N-1; ``out`` covers positions [pos0, N-1] (the newly committed ones).
"""

from __future__ import annotations

import torch
from torch import nn

from foresight.generate.stacked import StackedBlocks
from foresight.model import KVCache


class Drafter:
    """Interface: ``reset()`` before a sequence, ``propose(out, seq, pos0) -> (B, n_draft)`` after each step."""

    n_draft: int = 0
    name: str = "drafter"

    def reset(self) -> None:
        pass

    def propose(self, out, seq: torch.Tensor, pos0: int) -> torch.Tensor:
        raise NotImplementedError


def _greedy(model, h: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Argmax of the shared output head on the normalised hidden state: (..., D) -> (...)."""
    return model.lm_head(norm(h)).argmax(dim=-1)


class MTPDrafter(Drafter):
    """Meta MTP heads 1..n-1 (Gloeckle et al. 2024 §3.2; Stern et al. 2018 blockwise parallel decoding).

    Head k is a full block on the input of the trunk's last block (``last_input``), then the shared norm and
    output head; at the last committed position N-1 it predicts x[N+k], so heads 1..n-1 draft x[N+1..N+n-1]
    in parallel while head 0 (the trunk) gave the pending x[N]. Each head attends over its own keys and values
    of all earlier positions, so it keeps its own KV cache; ``last_input`` at a position depends only on the
    committed tokens up to it, so every cached entry is exact and nothing is ever truncated.
    """

    name = "mtp"

    def __init__(self, model, heads: nn.ModuleList, n_draft: int | None = None, stacked: bool = True) -> None:
        self.model, self.heads = model, list(heads)[: n_draft or len(heads)]
        self.n_draft = len(self.heads)
        # The heads all read the same input: one batched computation (generate/stacked.py) instead of n-1.
        self.stack = StackedBlocks(self.heads) if stacked else None
        self.caches: list[KVCache] = []

    def reset(self) -> None:
        self.caches = [KVCache() for _ in (self.heads if self.stack is None else [None])]

    def propose(self, out, seq: torch.Tensor, pos0: int) -> torch.Tensor:
        x = out.last_input  # (B, m, D): positions [pos0, N-1]
        cos, sin = self.model.rotary(x.shape[1], x.device, pos0)
        assert all(c.length == pos0 for c in self.caches), "MTP head cache out of step with the trunk"
        if self.stack is not None:
            last = self.stack(x, cos, sin, self.caches[0])[:, :, -1].transpose(0, 1)  # (B, n-1, D)
        else:
            # Head k at position N-1, one head at a time: (B, D) each.
            last = torch.stack([head(x, cos, sin, cache)[:, -1] for head, cache in zip(self.heads, self.caches)], dim=1)
        # One output-head product for all heads (they share the norm and the unembedding): (B, n-1, D) -> (B, n-1).
        return _greedy(self.model, last, self.model.norm)


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

    def __init__(self, model, dsmtp, n_draft: int | None = None) -> None:
        self.model, self.modules = model, list(dsmtp.layers)[: n_draft or len(dsmtp.layers)]
        self.post_norm = dsmtp.cfg.h0 == "post_norm"
        self.n_draft = len(self.modules)
        self.caches: list[KVCache] = []
        self.carry: list[torch.Tensor | None] = []

    def reset(self) -> None:
        self.caches = [KVCache() for _ in self.modules]
        self.carry = [None] * len(self.modules)  # carry[k-1]: output of module k kept for module k+1

    def propose(self, out, seq: torch.Tensor, pos0: int) -> torch.Tensor:
        n = seq.shape[1] - 1  # N: x[N] is the pending token
        h_prev = out.hidden if self.post_norm else out.final  # (B, N - pos0, D): level 0 at [pos0, N-1]
        prev_start = pos0
        hyp = seq  # x[0..N] then drafts appended: the sequence the modules assume
        old_carry = list(self.carry)
        drafts = []
        for k, (module, cache) in enumerate(zip(self.modules, self.caches), start=1):
            s = cache.length  # module k recomputes positions [s, N-1]; s <= prev_start
            if s < prev_start:
                h_in = torch.cat([old_carry[k - 2], h_prev], dim=1)  # carry covers [s, prev_start)
            else:
                h_in = h_prev
            assert h_in.shape[1] == n - s, "DS-MTP drafter lost track of positions"
            tokens = hyp[:, s + k : n + k]  # x[j+k] for j in [s, N-1]: (B, N - s)
            cos, sin = self.model.rotary(n - s, seq.device, s)
            h = module(h_in, self.model.embed_tokens(tokens), cos, sin, cache)  # (B, N - s, D)
            norm = module.norm if module.norm is not None else self.model.norm
            d = _greedy(self.model, h[:, -1], norm)  # drafts x[N+k]
            drafts.append(d)
            hyp = torch.cat([hyp, d[:, None]], dim=1)
            exact = max(0, n - k + 1)  # positions j <= N-k read committed/pending tokens only
            cache.truncate(exact)
            keep_from = max(0, n - k)  # where module k+1 restarts next round
            self.carry[k - 1] = h[:, keep_from - s : exact - s]
            h_prev, prev_start = h, s
        return torch.stack(drafts, dim=1)  # (B, D)
