"""Self-speculative greedy decoding: draft with the model's own extra heads, verify with head 0 in one pass.

Greedy blockwise parallel decoding (Stern et al. 2018; used with MTP heads in Gloeckle et al. 2024 §3.2, with
DeepSeek-V3's MTP module in DeepSeek-V3 §5.4.3). Each step:

1. The drafter proposes d_1..d_D for x[N+1..N+D]; x[N] (the *pending* token) is head 0's greedy choice from
   the previous step, so it is exact.
2. One trunk forward over the block [x[N], d_1, ..., d_D] (positions N..N+D, against the KV cache) gives head
   0's greedy choices g_0..g_D, where g_i is the greedy token for x[N+i+1] *if* the block is right so far.
3. Accept the longest prefix with d_i == g_{i-1}: a drafts. Commit x[N], d_1..d_a; the new pending token is
   g_a — the verified token, exact because everything before it was. So a step yields a + 1 tokens.
4. Truncate the trunk's KV cache to the committed positions (the rejected drafts' keys/values go).

Every committed token is the argmax of head 0 given exactly the committed prefix, so the output equals
plain greedy decoding token for token (up to floating-point ties, as between any two ways to batch the same
computation).

Batches (B > 1): every row advances by its *own* accepted length, so rows drift apart. The trunk's caches
(and the drafters' own) then hold a length per row (``KVCache`` per-row path: each row's keys written at its
own position, a mask per row hiding the rest), RoPE positions are (B, T), and the token sequence is a padded
buffer with the pending index N per row. A step verifies each row's drafts at that row's positions. A row
that is finished (its budget or eos) leaves the batch — its cache rows and drafter state are dropped — and
the others go on. B = 1 keeps ints everywhere: the scalar cache, no masks beyond the usual causal one.

Reported: acceptance per draft position, mean accepted length τ (tokens per row and verification step,
1 + a), tokens per step (the same over the batch's B slots: a finished row's empty slot counts 0), and —
separately, since τ is not a speed-up — wall-clock time against plain greedy decoding (see benchmarks/).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from foresight.errors import ForesightError
from foresight.generate.block_size import BlockChooser, cost_curve
from foresight.generate.drafters import Drafter, DraftVocab, DSMTPDrafter, MTPDrafter
from foresight.generate.sampling import _validate
from foresight.generate.spec_stats import SpecStats
from foresight.generate.top_draft import TOPDrafter
from foresight.model import TrunkOutput
from foresight.modes import eval_mode

# The drafter classes an objective picks from in ``Objective.drafter(..., forms)``: generate/ owns how drafting
# runs, the objective which form its heads take. Passed in, so objectives/ never imports generate/.
DRAFTER_FORMS = SimpleNamespace(MTPDrafter=MTPDrafter, DSMTPDrafter=DSMTPDrafter, TOPDrafter=TOPDrafter)
# The most n-gram drafts per step when the block size is chosen from measured costs (``n_draft="auto"``).
AUTO_NGRAM_DRAFTS = 8


def make_drafter(lm, kind: str = "auto", n_draft: int | None = None, stacked: bool = True,
                 draft_vocab: torch.Tensor | None = None) -> Drafter:
    """A drafter from ``lm``'s own heads: 'mtp', 'dsmtp', 'top' or 'auto' (MTP, else DS-MTP, else TOP); or
    'ngram' (prompt lookup, no heads: ``generate/ngram.py``), or 'ngram+KIND' (prompt lookup where an n-gram
    matches, else KIND's heads).

    ``stacked``: run the MTP heads as one batched computation (same drafts, less overhead). ``draft_vocab``:
    token ids (V',) the MTP / DS-MTP drafts are restricted to (a frequency-ranked sub-vocabulary; the output
    is unchanged, verification is over the full vocabulary)."""
    from foresight.objectives import REGISTRY, drafting_objectives

    if kind == "ngram" or kind.startswith("ngram+"):
        from foresight.generate.ngram import NgramDrafter

        if n_draft is not None and n_draft < 1:
            raise ForesightError(f"the number of drafts must be >= 1, got {n_draft}")
        if kind == "ngram":
            return NgramDrafter(n_draft)
        return NgramDrafter(fallback=make_drafter(lm, kind[len("ngram+"):], n_draft, stacked, draft_vocab))

    drafters = drafting_objectives()  # objectives that can draft, in 'auto' order (Objective.draft_order)
    found = {k: [o for o in lm.objectives.values() if o.name == k] for k in drafters}
    if kind == "auto":
        kind = next((k for k in drafters if found[k]), None)
        if kind is None:
            heads = [REGISTRY[k][1].draft_heads or k for k in drafters]  # "MTP heads", ...
            listed = ", ".join(heads[:-1]) + " or " + heads[-1] if len(heads) > 1 else "".join(heads)
            raise ForesightError(f"this model has no {listed} to draft with")
    if kind not in drafters:
        raise ForesightError(f"drafter must be one of {', '.join(drafters)}, auto, ngram or ngram+KIND, got {kind!r}")
    if not found[kind]:
        have = ", ".join(k for k in drafters if found[k]) or "none"
        raise ForesightError(f"this model has no {kind} heads to draft with (it has: {have})")
    if n_draft is not None:
        from foresight.model.limits import MAX_DRAFTS, check_int

        check_int(n_draft, "the number of drafts", 1, MAX_DRAFTS)
    vocab = None if draft_vocab is None else DraftVocab(lm.model, torch.as_tensor(draft_vocab))
    return found[kind][0].drafter(lm.model, n_draft, stacked, vocab, DRAFTER_FORMS)


def _slice(out: TrunkOutput, n: int) -> TrunkOutput:
    """The first ``n`` positions of a trunk output (the accepted part of a verified block)."""
    return TrunkOutput(out.hidden[:, :n], out.final[:, :n], out.last_input[:, :n], out.cos[..., :n, :],
                       out.sin[..., :n, :])


def _take_rows(out: TrunkOutput, rows: torch.Tensor) -> TrunkOutput:
    """The batch rows ``rows`` of a trunk output (per-row RoPE tables included)."""
    cos, sin = (out.cos[rows], out.sin[rows]) if out.cos.dim() == 4 else (out.cos, out.sin)
    return TrunkOutput(out.hidden[rows], out.final[rows], out.last_input[rows], cos, sin)


def _fill_after_eos(tokens: torch.Tensor, prompt_len: int, eos_id: int, max_new_tokens: int) -> torch.Tensor:
    """What ``generate`` returns with ``eos_id``: rows repeat eos after their first one, and generation stops
    once every row has produced it."""
    gen = tokens[:, prompt_len:]
    hit = gen == eos_id  # (B, n)
    after = hit.long().cumsum(dim=1) > 0
    gen = gen.masked_fill(after, eos_id)
    never = torch.full_like(hit[:, 0], max_new_tokens, dtype=torch.long)
    first = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), never)  # (B,) index of the first eos
    length = min(max_new_tokens, int(first.max()) + 1)
    return torch.cat([tokens[:, :prompt_len], gen[:, :length]], dim=1)


def _decode_one_row(model, drafter: Drafter, caches, out: TrunkOutput, seq: torch.Tensor, p: int,
                    max_new_tokens: int, eos_id: int | None, stats: SpecStats,
                    chooser: BlockChooser | None = None, stop=None) -> torch.Tensor:
    """B = 1: ints everywhere (the scalar cache path). ``seq`` (1, P + 1): the prompt and the pending token.
    ``chooser``: verify only the first ``chooser.choose()`` drafts of each step (block size from measured costs).
    ``stop(new)``: True ends decoding after the step that made it so."""
    pos0 = 0
    while True:
        if eos_id is not None and bool((seq[:, p:] == eos_id).any()):
            break
        if stop is not None and stop(seq[0, p:]):  # the pending token is exact: it counts
            break
        remaining = max_new_tokens - (seq.shape[1] - p)
        if remaining <= 0:
            break
        n = seq.shape[1] - 1
        drafts = drafter.propose(out, seq, pos0, n)[:, : remaining - 1]  # (1, d), d <= remaining - 1
        if chooser is not None:
            drafts = drafts[:, : chooser.choose()]
        d = drafts.shape[1]
        block = torch.cat([seq[:, -1:], drafts], dim=1)  # (1, 1 + d): positions N..N+d
        out = model.trunk(block, caches)
        greedy = model.lm_head(out.hidden).argmax(dim=-1)  # (1, 1 + d): greedy[:, i] is for x[N+i+1]
        match = (greedy[:, :d] == drafts).long().cumprod(dim=1)  # (1, d): prefix of agreeing drafts
        a = int(match.sum())
        stats.record(torch.ones_like(drafts, dtype=torch.bool), match)
        if chooser is not None:
            chooser.observe(torch.ones_like(drafts, dtype=torch.bool), match)
        for cache in caches:
            cache.truncate(n + 1 + a)  # keep x[N] and the a accepted drafts
        seq = torch.cat([seq, greedy[:, : a + 1]], dim=1)  # accepted drafts equal the greedy tokens; greedy[a] is new
        out, pos0 = _slice(out, a + 1), n
    return seq[:, : p + max_new_tokens]


def _decode_rows(model, drafter: Drafter, caches, out: TrunkOutput, seq: torch.Tensor, p: int,
                 max_new_tokens: int, eos_id: int | None, stats: SpecStats,
                 chooser: BlockChooser | None = None) -> torch.Tensor:
    """B > 1: every row at its own position (per-row caches, RoPE and masks); a row that finishes leaves the
    batch (its caches and drafter state are dropped), so later steps run on the unfinished rows only."""
    b = seq.shape[0]
    width = p + max_new_tokens + drafter.n_draft + 1  # room for a block written past the longest row
    buf = seq.new_zeros(b, width)  # row r: x[0..n[r]-1] committed, x[n[r]] pending, padding after
    buf[:, : p + 1] = seq
    result = seq.new_zeros(b, p + max_new_tokens)  # finished rows, in the input's order
    active = torch.arange(b, device=seq.device)  # original index of each row still decoding
    n = torch.full((b,), p, dtype=torch.long, device=seq.device)
    pos0 = torch.zeros_like(n)  # ``out`` starts at position pos0 in every row
    col = torch.arange(width, device=seq.device)
    steps = torch.arange(1 + drafter.n_draft, device=seq.device)
    while True:
        made = n + 1 - p  # (R,) tokens generated per row, the pending one included
        done = made >= max_new_tokens
        if eos_id is not None:
            done |= ((buf == eos_id) & (col >= p) & (col <= n[:, None])).any(dim=1)
        if bool(done.any()):
            result[active[done]] = buf[done, : p + max_new_tokens]  # past an eos: overwritten by _fill_after_eos
            if bool(done.all()):
                return result
            keep = (~done).nonzero().squeeze(1)
            active, buf, n, pos0, made = active[keep], buf[keep], n[keep], pos0[keep], made[keep]
            out = _take_rows(out, keep)
            for cache in caches:
                cache.keep_rows(keep)
            drafter.keep_rows(keep)
        limit = max_new_tokens - made - 1  # (R,) drafts each row can still use (>= 0)
        drafts = drafter.propose(out, buf, pos0, n)
        d = min(drafts.shape[1], int(limit.max()), drafts.shape[1] if chooser is None else chooser.choose())
        drafts = drafts[:, :d]  # (R, d)
        block = torch.cat([buf.gather(1, n[:, None]), drafts], dim=1)  # (R, 1 + d): positions N..N+d per row
        out = model.trunk(block, caches)
        greedy = model.lm_head(out.hidden).argmax(dim=-1)  # (R, 1 + d): greedy[:, i] is for x[N+i+1]
        usable = steps[:d] < limit[:, None]  # (R, d): drafts within each row's budget
        match = ((greedy[:, :d] == drafts) & usable).long().cumprod(dim=1)  # (R, d): prefix of agreeing drafts
        a = match.sum(dim=1)  # (R,)
        stats.record(usable, match)
        if chooser is not None:
            chooser.observe(usable, match)
        # Row r's new tokens x[N+1..N+a+1] are greedy[r, :a+1] (accepted drafts equal the greedy tokens, greedy[a]
        # is the new pending). The rest of the block lands past the new N: padding, overwritten later.
        buf.scatter_(1, n[:, None] + 1 + steps[: d + 1], greedy)
        kept = n + a + 1  # x[N] and the a accepted drafts stay cached; one tensor for all layers (shared masks)
        for cache in caches:
            cache.truncate(kept)
        pos0, n = n, kept
        out = _slice(out, int(a.max()) + 1)


@torch.no_grad()
def speculative_generate(lm, input_ids: torch.Tensor, max_new_tokens: int, drafter: Drafter | str = "auto", *,
                         n_draft: int | str | None = None, eos_id: int | None = None,
                         packed: bool = False, stop=None) -> tuple[torch.Tensor, SpecStats]:
    """Greedy decoding of ``lm.model`` accelerated by ``drafter``: (B, P) -> ((B, P + n), stats).

    The output equals ``generate(lm.model, input_ids, max_new_tokens, eos_id=eos_id)`` (greedy), row by row.
    ``stop(new)`` (B = 1 only): called with the new tokens so far (n,) after each verification step; True ends
    decoding there. The output is then greedy's up to a point at or a few tokens past where ``generate`` with
    the same ``stop`` ends (a step commits several tokens), never different before it.

    ``n_draft="auto"``: the drafter proposes its most drafts (``AUTO_NGRAM_DRAFTS`` for ngram) and each step
    verifies the number that maximises the expected tokens per unit of measured time (``generate/block_size.py``;
    a short calibration of the forward's cost per block size, once per model, threads and batch size);
    ``stats.block_sizes`` lists the choices. ``packed``: pack the model's Linears for CPU inference first
    (``generate/packed.py``; in place, kept afterwards; a note and no change where it does not apply).

    ``lm`` may also be a wrapped transformers model (``foresight.wrap``): then its own heads draft and the model
    verifies with its KV cache (``generate/wrapped.py``; ``drafter`` is 'auto' or an objective name), and the
    output equals ``lm.model.generate(input_ids, do_sample=False)``.
    """
    if stop is not None and (hasattr(lm, "parts") or input_ids.shape[0] != 1):
        raise ValueError("stop works on one row of a foresight model at a time")
    if hasattr(lm, "parts"):  # a ForesightModel: the transformers model verifies
        from foresight.generate.wrapped import speculative_generate_wrapped

        if n_draft == "auto" or packed:
            raise ForesightError("n_draft='auto' and packed=True are for foresight models, not wrapped ones")
        return speculative_generate_wrapped(lm, input_ids, max_new_tokens, drafter, n_draft=n_draft, eos_id=eos_id)
    _validate(input_ids, max_new_tokens, 0.0, None, None)
    model = lm.model
    if packed:
        from foresight.generate.packed import pack_linears

        pack_linears(lm)  # the trunk, the output head and the objectives' heads
    auto = n_draft == "auto"
    if isinstance(n_draft, str) and not auto:
        raise ForesightError(f"the number of drafts must be an integer or 'auto', got {n_draft!r}")
    device = next(model.parameters()).device
    ids = input_ids.long().to(device)
    if max_new_tokens == 0:
        return ids.clone(), SpecStats(0)
    if isinstance(drafter, str):
        most = AUTO_NGRAM_DRAFTS if drafter == "ngram" else None  # heads: all of them
        drafter = make_drafter(lm, drafter, most if auto else n_draft)
    b, p = ids.shape
    stats = SpecStats(drafter.n_draft, batch=b)
    with eval_mode(lm):
        caches = model.new_caches()
        drafter.reset()
        out = model.trunk(ids, caches)  # prefill: positions 0..P-1
        pending = model.lm_head(out.hidden[:, -1]).argmax(dim=-1)  # (B,) the greedy x[P]
        seq = torch.cat([ids, pending[:, None]], dim=1)  # (B, P + 1)
        chooser = None
        if auto:
            chooser = BlockChooser(cost_curve(model, caches, pending[:, None], drafter.n_draft), drafter.n_draft)
            stats.block_sizes = chooser.chosen
        if b == 1:
            tokens = _decode_one_row(model, drafter, caches, out, seq, p, max_new_tokens, eos_id, stats, chooser, stop)
        else:
            tokens = _decode_rows(model, drafter, caches, out, seq, p, max_new_tokens, eos_id, stats, chooser)
        if eos_id is not None:
            tokens = _fill_after_eos(tokens, p, eos_id, max_new_tokens)
        return tokens, stats
