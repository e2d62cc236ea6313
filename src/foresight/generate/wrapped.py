"""Self-speculative greedy decoding on a wrapped transformers model (``foresight.wrap``) with its own heads.

The same algorithm as ``generate/speculative.py`` (greedy blockwise parallel decoding, Stern et al. 2018; Meta
MTP §3.2; DeepSeek-V3 §5.4.3): the objective's heads draft the tokens after the pending one, one forward of the
transformers model over [pending, drafts] against its own KV cache verifies them, the longest agreeing prefix
is kept and the cache is cropped back to the committed tokens. Every committed token is the model's argmax
given exactly the committed prefix, so the output equals ``model.generate(do_sample=False)`` token for token
(up to floating-point ties between two ways of batching the same computation).

What drafts is the objective's business (``OnParts.draft``: MTP heads, DS-MTP modules, the TOP head's
ranking); this module runs the verification and keeps what the heads read. MTP heads
(``OnParts.cached_drafter``) keep KV caches of their own in step with the model's: they run inside every model
pass on the same positions with the mask and RoPE tables the model gave its last layer, and are cropped with
it. DS-MTP modules and the TOP head draft from the trunk tensors of the committed positions (the last layer's
input and output, the final hidden state): DS-MTP modules run over the whole committed prefix each step
(``objectives.parts.prefix_layer_kwargs`` builds the mask and RoPE tables the model would give its last
layer), exact and simple, at one module per draft over N positions per step (their inputs at the last k
positions depend on the drafts, so a cache needs the carry scheme of ``generate/drafters.py``: not done yet).

Rows decode one at a time (batch 1 each); a batch of B prompts of equal length gives B rows, padded after their
eos with the model's pad token as ``generate`` pads them.
"""

from __future__ import annotations

import torch

from foresight.errors import ForesightError
from foresight.generate.spec_stats import SpecStats
from foresight.modes import eval_mode
from foresight.objectives.parts import HeadCache


def _drafting(wrapped, kind: str):
    """The objective that drafts: ``kind`` = its name, or 'auto' (lowest ``draft_order`` among those whose
    ``draft`` works on a wrapped model)."""
    able = sorted((o for o in wrapped.objectives.values() if o.draft_order is not None and o.can_draft_on_parts),
                  key=lambda o: o.draft_order)
    if kind == "auto":
        if not able:
            have = ", ".join(wrapped.objectives) or "none"
            raise ForesightError(f"this wrapped model has no heads that can draft (objectives: {have}); wrap it with "
                                 f"an mtp, dsmtp or top objective")
        return able[0]
    found = [o for o in able if o.name == kind]
    if not found:
        names = ", ".join(o.name for o in able) or "none"
        raise ForesightError(f"this wrapped model has no {kind} heads to draft with (it can draft with: {names})")
    return found[0]


class _Verifier:
    """The wrapped model with its KV cache: ``step(ids)`` runs positions N..N+m-1 and returns the final hidden
    states and the last layer's input and output (B, m, D) each, and the keyword arguments the model gave its
    last layer (mask and RoPE tables of those positions); ``crop(remove)`` drops the last ``remove`` cached
    positions (rejected drafts)."""

    def __init__(self, parts) -> None:
        self.parts = parts
        self.kv = HeadCache(parts)

    def step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        caught: dict = {}
        with self.parts._catch_last_layer(caught):
            out = self.parts.model.base_model(input_ids=ids, use_cache=True, **{self.kv.arg: self.kv.cache})
        self.kv.filled(ids.shape[1])
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return hidden, caught["last_input"], caught["final"], caught["layer_kwargs"]

    def crop(self, remove: int) -> None:
        self.kv.crop(remove)


def _decode_row(wrapped, drafter, ids: torch.Tensor, max_new_tokens: int, n_draft: int | None,
                eos_ids: set[int], stats: SpecStats) -> torch.Tensor:
    """One row (1, P) -> (1, P + n), n <= max_new_tokens (stops after an eos).

    A drafter with ``cached_drafter`` (MTP heads) runs its heads inside every model pass, on the same positions,
    with the same mask and RoPE tables and caches cropped alike; any other drafts from the committed prefix."""
    parts = wrapped.parts
    verifier = _Verifier(parts)
    make_cached = getattr(drafter, "cached_drafter", None)
    cached = make_cached(parts, n_draft) if make_cached is not None else None
    hidden, last_input, final, layer_kwargs = verifier.step(ids)  # prefill: positions 0..P-1
    if cached is not None:
        cached.observe(last_input, layer_kwargs)
    pending = parts.logits(hidden[:, -1:]).argmax(dim=-1)  # (1, 1): the greedy x[P]
    seq = torch.cat([ids, pending], dim=1)  # x[0..N]: committed and pending
    committed = {"hidden": hidden, "last_input": last_input, "final": final}  # (1, N, D) each
    p, last = ids.shape[1], ids.shape[1] - 1  # last: index of position N-1 in the latest pass
    while seq.shape[1] - p < max_new_tokens and int(seq[0, -1]) not in eos_ids:
        remaining = max_new_tokens - (seq.shape[1] - p)
        guesses = cached.propose(last) if cached is not None else drafter.draft(committed, seq, parts, n_draft)
        drafts = guesses[:, : remaining - 1]  # (1, d): x[N] is already made
        d = drafts.shape[1]
        block = torch.cat([seq[:, -1:], drafts], dim=1)  # (1, 1 + d): positions N..N+d
        hidden, last_input, final, layer_kwargs = verifier.step(block)
        if cached is not None:
            cached.observe(last_input, layer_kwargs)
        greedy = parts.logits(hidden).argmax(dim=-1)  # (1, 1 + d): greedy[:, i] is for x[N+i+1]
        match = (greedy[:, :d] == drafts).long().cumprod(dim=1)  # (1, d): prefix of agreeing drafts
        a = int(match.sum())
        stats.record(torch.ones_like(drafts, dtype=torch.bool), match)
        verifier.crop(d - a)  # keep x[N] and the a accepted drafts
        if cached is not None:
            cached.crop(d - a)
        last = a  # position N+a, the last committed one now, is index a of this pass
        new = greedy[:, : a + 1]  # accepted drafts equal the greedy tokens; greedy[a] is the new pending
        for i, tok in enumerate(new[0].tolist()):  # an eos among them ends the row there
            if tok in eos_ids:
                new = new[:, : i + 1]
                break
        seq = torch.cat([seq, new], dim=1)
        if cached is None:
            for key, t in (("hidden", hidden), ("last_input", last_input), ("final", final)):
                committed[key] = torch.cat([committed[key], t[:, : a + 1]], dim=1)
    return seq[:, : p + max_new_tokens]


@torch.no_grad()
def speculative_generate_wrapped(wrapped, input_ids: torch.Tensor, max_new_tokens: int, drafter: str = "auto", *,
                                 n_draft: int | None = None, eos_id: int | list[int] | None = None,
                                 pad_id: int | None = None) -> tuple[torch.Tensor, SpecStats]:
    """Greedy decoding of ``wrapped.model`` drafted by ``wrapped``'s own heads: (B, P) -> ((B, P + n), stats).

    ``drafter``: 'auto' (MTP heads, else DS-MTP modules, else the TOP head) or an objective name; ``n_draft``:
    drafts per step (default: every head; TOP: 3). ``eos_id`` defaults to the model's generation config; rows
    that stop early are padded with ``pad_id`` (default: the generation config's pad token, else eos).
    The output equals ``wrapped.model.generate(input_ids, max_new_tokens=..., do_sample=False)``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ForesightError("input_ids must be a (batch, prompt length) tensor of token ids with a non-empty prompt")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ForesightError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if n_draft is not None and (not isinstance(n_draft, int) or n_draft < 1):
        raise ForesightError(f"n_draft must be an int >= 1, got {n_draft!r}")
    obj = _drafting(wrapped, drafter)
    gen = getattr(wrapped.model, "generation_config", None)
    if eos_id is None and gen is not None:
        eos_id = gen.eos_token_id
    eos_ids = set() if eos_id is None else {int(e) for e in (eos_id if isinstance(eos_id, (list, tuple)) else [eos_id])}
    if pad_id is None:
        pad_id = gen.pad_token_id if gen is not None and gen.pad_token_id is not None else min(eos_ids, default=0)
    device = next(wrapped.model.parameters()).device
    ids = input_ids.long().to(device)
    stats = SpecStats(n_draft or obj.default_drafts, batch=ids.shape[0])
    if max_new_tokens == 0:
        return ids.clone(), stats
    with eval_mode(wrapped):
        rows = [_decode_row(wrapped, obj, ids[b : b + 1], max_new_tokens, n_draft, eos_ids, stats)
                for b in range(ids.shape[0])]
    width = max(r.shape[1] for r in rows)
    out = ids.new_full((len(rows), width), pad_id)
    for b, r in enumerate(rows):
        out[b, : r.shape[1]] = r[0]
    return out, stats
