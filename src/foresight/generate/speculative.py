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
computation). Batch rows accept different lengths; the batch advances by the smallest accepted length among
unfinished rows, which keeps every row exact (a row that accepted more simply re-drafts those tokens).

Reported: acceptance per draft position, mean accepted length τ (tokens per verification step, 1 + a), and —
separately, since τ is not a speed-up — wall-clock time against plain greedy decoding (see benchmarks/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from foresight.errors import ForesightError
from foresight.generate.drafters import Drafter, DSMTPDrafter, MTPDrafter
from foresight.generate.sampling import _validate
from foresight.model import TrunkOutput

DRAFTERS = ("mtp", "dsmtp", "top")


@dataclass
class SpecStats:
    """Counts over (row, step) pairs of unfinished rows; ``steps`` counts verification forwards."""

    n_draft: int
    steps: int = 0
    drafted: list[int] = field(default_factory=list)  # per draft position i: drafts proposed
    accepted: list[int] = field(default_factory=list)  # per draft position i: drafts accepted (prefix)
    reached: list[int] = field(default_factory=list)  # per draft position i: proposed with drafts < i accepted
    row_steps: int = 0  # (row, step) pairs
    row_tokens: int = 0  # sum over (row, step) of 1 + a_row
    batch_tokens: int = 0  # sum over steps of 1 + a (the batch's common advance)

    def __post_init__(self) -> None:
        self.drafted = self.drafted or [0] * self.n_draft
        self.accepted = self.accepted or [0] * self.n_draft
        self.reached = self.reached or [0] * self.n_draft

    @property
    def acceptance(self) -> list[float]:
        """P(draft i is accepted), i = 1..n_draft: it and every draft before it matched."""
        return [a / d if d else float("nan") for a, d in zip(self.accepted, self.drafted)]

    @property
    def conditional_acceptance(self) -> list[float]:
        """P(draft i accepted | draft i-1 accepted): the drafter's accuracy at depth i on the right path."""
        return [a / r if r else float("nan") for a, r in zip(self.accepted, self.reached)]

    @property
    def tau(self) -> float:
        """Mean accepted length per row and step, the verified token included (1 .. n_draft + 1)."""
        return self.row_tokens / max(self.row_steps, 1)

    @property
    def tokens_per_step(self) -> float:
        """Tokens the whole batch advanced per verification forward (= tau at batch size 1)."""
        return self.batch_tokens / max(self.steps, 1)


def make_drafter(lm, kind: str = "auto", n_draft: int | None = None, stacked: bool = True) -> Drafter:
    """A drafter from ``lm``'s own heads: 'mtp', 'dsmtp', 'top' or 'auto' (MTP, else DS-MTP, else TOP).

    ``stacked``: run the MTP heads as one batched computation (same drafts, less overhead)."""
    from foresight.generate.top_draft import TOPDrafter
    from foresight.objectives import DSMTP, MTP, TOP

    found = {"mtp": [o for o in lm.objectives.values() if isinstance(o, MTP)],
             "dsmtp": [o for o in lm.objectives.values() if isinstance(o, DSMTP)],
             "top": [o for o in lm.objectives.values() if isinstance(o, TOP)]}
    if kind == "auto":
        kind = next((k for k in DRAFTERS if found[k]), None)
        if kind is None:
            raise ForesightError("this model has no MTP heads, DS-MTP modules or TOP head to draft with")
    if kind not in DRAFTERS:
        raise ForesightError(f"drafter must be one of {', '.join(DRAFTERS)} or auto, got {kind!r}")
    if not found[kind]:
        have = ", ".join(k for k in DRAFTERS if found[k]) or "none"
        raise ForesightError(f"this model has no {kind} heads to draft with (it has: {have})")
    if n_draft is not None and n_draft < 1:
        raise ForesightError(f"the number of drafts must be >= 1, got {n_draft}")
    obj = found[kind][0]
    if kind == "mtp":
        return MTPDrafter(lm.model, obj.heads, n_draft, stacked)
    if kind == "dsmtp":
        return DSMTPDrafter(lm.model, obj, n_draft)
    return TOPDrafter(lm.model, obj.head, n_draft or 3)


def _slice(out: TrunkOutput, n: int) -> TrunkOutput:
    """The first ``n`` positions of a trunk output (the accepted part of a verified block)."""
    return TrunkOutput(out.hidden[:, :n], out.final[:, :n], out.last_input[:, :n], out.cos[:n], out.sin[:n])


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


@torch.no_grad()
def speculative_generate(lm, input_ids: torch.Tensor, max_new_tokens: int, drafter: Drafter | str = "auto", *,
                         n_draft: int | None = None, eos_id: int | None = None) -> tuple[torch.Tensor, SpecStats]:
    """Greedy decoding of ``lm.model`` accelerated by ``drafter``: (B, P) -> ((B, P + n), stats).

    The output equals ``generate(lm.model, input_ids, max_new_tokens, eos_id=eos_id)`` (greedy).
    """
    _validate(input_ids, max_new_tokens, 0.0, None, None)
    model = lm.model
    device = next(model.parameters()).device
    ids = input_ids.long().to(device)
    if max_new_tokens == 0:
        return ids.clone(), SpecStats(0)
    if isinstance(drafter, str):
        drafter = make_drafter(lm, drafter, n_draft)
    stats = SpecStats(drafter.n_draft)
    modes = [(m, m.training) for m in lm.modules()]
    lm.eval()
    try:
        p = ids.shape[1]
        caches = model.new_caches()
        drafter.reset()
        out = model.trunk(ids, caches)  # prefill: positions 0..P-1
        pending = model.lm_head(out.hidden[:, -1]).argmax(dim=-1)  # (B,) the greedy x[P]
        seq = torch.cat([ids, pending[:, None]], dim=1)  # (B, N + 1): committed x[0..N-1] and pending x[N]
        pos0 = 0
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
        while True:
            if eos_id is not None:
                done |= (seq[:, p:] == eos_id).any(dim=1)
            remaining = max_new_tokens - (seq.shape[1] - p)
            if remaining <= 0 or bool(done.all()):
                break
            n = seq.shape[1] - 1
            drafts = drafter.propose(out, seq, pos0)[:, : remaining - 1]  # (B, d), d <= remaining - 1
            d = drafts.shape[1]
            block = torch.cat([seq[:, -1:], drafts], dim=1)  # (B, 1 + d): positions N..N+d
            out = model.trunk(block, caches)
            greedy = model.lm_head(out.hidden).argmax(dim=-1)  # (B, 1 + d): greedy[:, i] is for x[N+i+1]
            match = (greedy[:, :d] == drafts).long().cumprod(dim=1)  # (B, d): prefix of agreeing drafts
            a_rows = match.sum(dim=1)  # (B,)
            live = ~done
            a = int(a_rows[live].min()) if d else 0
            # Statistics over unfinished rows.
            n_live = int(live.sum())
            per_position = match[live].sum(dim=0).tolist()  # (d,) accepted drafts at each depth
            stats.steps += 1
            stats.row_steps += n_live
            stats.row_tokens += n_live + sum(per_position)
            stats.batch_tokens += a + 1
            for i in range(d):
                stats.drafted[i] += n_live
                stats.accepted[i] += per_position[i]
                stats.reached[i] += n_live if i == 0 else per_position[i - 1]
            for cache in caches:
                cache.truncate(n + 1 + a)  # keep x[N] and the a accepted drafts
            seq = torch.cat([seq, drafts[:, :a], greedy[:, a : a + 1]], dim=1)
            out, pos0 = _slice(out, a + 1), n
        tokens = seq[:, : p + max_new_tokens]
        if eos_id is not None:
            tokens = _fill_after_eos(tokens, p, eos_id, max_new_tokens)
        return tokens, stats
    finally:
        for m, mode in modes:
            m.training = mode
