"""Self-speculative decoding: token-for-token equal to plain greedy decoding, drafts equal to what the heads
compute from scratch, and the bookkeeping of acceptance statistics.

Random heads rarely agree with the trunk, which would leave the multi-token accept/truncate paths untested.
So some tests wrap the real drafter: it still runs (its caches and carries evolve as in real use, and its
drafts are checked against a from-scratch recomputation), but the tokens proposed to the verifier are the
true greedy continuation with random corruptions, drawn per row, so every accepted length 0..D occurs in
every row independently and batch rows drift apart (the per-row cache, RoPE and mask path).
"""

from __future__ import annotations

import pytest
import torch

from foresight.errors import ForesightError
from foresight.generate import generate, make_drafter, speculative_generate
from foresight.generate.drafters import Drafter
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

from helpers import randomize_weights

MTP4 = [{"name": "ntp"}, {"name": "mtp", "n": 4}]
DSMTP3 = [{"name": "ntp"}, {"name": "dsmtp", "preset": "top_paper", "depth": 3}]
DSMTP_DS = [{"name": "ntp"}, {"name": "dsmtp", "preset": "deepseek_v3", "depth": 2}]
TOP = [{"name": "ntp"}, {"name": "top", "window": 8}]


def _lm(specs, seed=0, dtype=torch.float32, **kw) -> TrainableLM:
    base = dict(vocab_size=13, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40,
                max_seq_len=8)  # RoPE tables grow during decoding
    base.update(kw)
    torch.manual_seed(seed)
    lm = TrainableLM(ModelConfig(**base), specs)
    randomize_weights(lm, seed + 1, norm_scale=0.2)  # O(1) activations: well-separated logits
    return lm.to(dtype).eval()


def _ids(b, p, v=13, seed=3):
    return torch.randint(0, v, (b, p), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("specs", [MTP4, DSMTP3, DSMTP_DS, TOP], ids=["mtp4", "dsmtp3", "deepseek", "top"])
@pytest.mark.parametrize("b, p, n", [(1, 1, 30), (1, 6, 29), (3, 4, 25), (2, 3, 1), (2, 3, 2), (5, 2, 27),
                                     (5, 1, 3), (3, 7, 30)])
def test_greedy_output_is_identical_to_plain_greedy(specs, b, p, n):
    lm = _lm(specs)
    ids = _ids(b, p)
    want = generate(lm.model, ids, n)
    got, stats = speculative_generate(lm, ids, n)
    assert torch.equal(got, want)
    assert stats.steps == 0 or 1.0 <= stats.tau <= stats.n_draft + 1


class NoisyOracle(Drafter):
    """Runs the real drafter (recording its inputs and drafts), but proposes the true greedy continuation
    with a random corruption per row, so that every accepted length occurs in every row. ``cuts`` fixes the
    first wrong draft of each row instead (n_draft = none wrong)."""

    def __init__(self, inner: Drafter, truth: torch.Tensor, seed: int = 0, cuts: list[int] | None = None) -> None:
        self.inner, self.truth, self.n_draft, self.cuts = inner, truth, inner.n_draft, cuts
        self.g = torch.Generator().manual_seed(seed)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (seq, n, own drafts)
        self.proposed: list[torch.Tensor] = []

    def reset(self) -> None:
        self.inner.reset()

    def keep_rows(self, rows):
        self.inner.keep_rows(rows)
        self.truth = self.truth[rows]
        if self.cuts is not None:
            self.cuts = [self.cuts[r] for r in rows.tolist()]

    def propose(self, out, seq, pos0, n):
        own = self.inner.propose(out, seq, pos0, n)
        b = seq.shape[0]
        n = torch.as_tensor(n).expand(b).clone()  # (B,) the pending index N per row
        self.calls.append((seq.clone(), n, own.clone()))
        drafts = own.clone()
        for r in range(b):  # the truth x[N+1..N+D], or past the reference's end: anything
            truth = self.truth[r, int(n[r]) + 1 : int(n[r]) + 1 + self.n_draft]
            drafts[r, : truth.shape[0]] = truth
        if self.cuts is None:
            cut = torch.randint(0, self.n_draft + 1, (b,), generator=self.g)  # first wrong draft (D = none)
        else:
            cut = torch.tensor(self.cuts)
        for r in range(b):
            if cut[r] < self.n_draft:
                drafts[r, cut[r]] = (drafts[r, cut[r]] + 1) % 13
        self.proposed.append(drafts)
        return drafts


@torch.no_grad()
def _reference_drafts(lm, kind: str, seq: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """What the heads predict when run from scratch (no caches) on the committed sequence ``seq[:, :N]`` and
    the hypothesis x[N] = pending, x[N+1..] = the drafter's own earlier drafts — the training computation."""
    model, n = lm.model, seq.shape[1] - 1
    out = model.trunk(seq[:, :n])
    if kind == "mtp":
        heads = lm.objectives["mtp"].heads
        return torch.stack([model.lm_head(model.norm(h(out.last_input, out.cos, out.sin)[:, -1])).argmax(-1)
                            for h in heads], dim=1)
    if kind == "top":
        scores = lm.objectives["top"].head(out.hidden[:, -1])
        scores[torch.arange(seq.shape[0]), seq[:, -1]] = float("-inf")
        return scores.topk(own.shape[1], dim=-1).indices
    obj = lm.objectives["dsmtp"]
    hyp = torch.cat([seq, own], dim=1)
    h = out.hidden if obj.cfg.h0 == "post_norm" else out.final
    drafts = []
    for k, module in enumerate(obj.layers, start=1):
        h = module(h, model.embed_tokens(hyp[:, k : n + k]), out.cos, out.sin)  # (B, N, D)
        norm = module.norm if module.norm is not None else model.norm
        drafts.append(model.lm_head(norm(h[:, -1])).argmax(-1))
    return torch.stack(drafts, dim=1)


def _check_drafts(lm, kind: str, oracle: NoisyOracle, p: int, n_new: int) -> int:
    """Every row's drafts at every step equal a from-scratch recomputation on that row alone (finished rows
    have left the batch: every row proposed for is unfinished); returns the number of (row, step) pairs."""
    checked = 0
    for seq, n, own in oracle.calls:
        for r in range(seq.shape[0]):
            assert int(n[r]) + 1 - p < n_new  # budget left
            row = seq[r : r + 1, : int(n[r]) + 1]
            assert torch.equal(own[r : r + 1], _reference_drafts(lm, kind, row, own[r : r + 1]))
            checked += 1
    return checked


@pytest.mark.parametrize("specs, kind, stacked", [(MTP4, "mtp", True), (MTP4, "mtp", False), (DSMTP3, "dsmtp", None),
                                                  (DSMTP_DS, "dsmtp", None), (TOP, "top", None)],
                         ids=["mtp4-stacked", "mtp4-per-head", "dsmtp3", "deepseek", "top"])
@pytest.mark.parametrize("b, p", [(1, 1), (1, 5), (3, 2), (2, 1), (5, 3)])
def test_drafts_equal_a_from_scratch_recomputation_under_every_accept_length(specs, kind, stacked, b, p):
    lm = _lm(specs, seed=4, dtype=torch.float64)  # fp64: cached vs uncached argmax cannot flip on rounding
    ids = _ids(b, p, seed=p)
    n_new = 40
    truth = generate(lm.model, ids, n_new + 8)
    oracle = NoisyOracle(make_drafter(lm, kind, stacked=bool(stacked)), truth, seed=p + b)
    got, stats = speculative_generate(lm, ids, n_new, oracle)
    assert torch.equal(got, truth[:, : p + n_new])
    assert _check_drafts(lm, kind, oracle, p, n_new) == stats.row_steps
    # Every accepted length occurred, and long accepts made the run take far fewer steps than tokens.
    assert stats.accepted[-1] > 0 and stats.accepted[0] < stats.drafted[0]
    assert stats.steps < n_new / 1.5
    # Per-row advancement: every row gained its own 1 + a per step, so rows drifted apart.
    assert b == 1 or any(int(n.max()) > int(n.min()) for _, n, _ in oracle.calls)


@pytest.mark.parametrize("specs, kind", [(MTP4, "mtp"), (DSMTP3, "dsmtp")], ids=["mtp4", "dsmtp3"])
def test_rows_advance_independently(specs, kind):
    """Row 0 is always fully accepted, row 1 never: row 0 finishes in a quarter of the steps and leaves the
    batch; it does not move at the slower row's pace (the old smallest-accepted-length rule would give row 0
    one token per step too)."""
    lm = _lm(specs, seed=7, dtype=torch.float64)
    ids = _ids(2, 3, seed=11)
    n_new = 30
    truth = generate(lm.model, ids, n_new + 8)
    oracle = NoisyOracle(make_drafter(lm, kind), truth, cuts=[3, 0])
    got, stats = speculative_generate(lm, ids, n_new, oracle)
    assert torch.equal(got, truth[:, : 3 + n_new])
    assert _check_drafts(lm, kind, oracle, 3, n_new) == stats.row_steps
    # Row 1: 1 token from the prefill, then 1 per step: 29 steps. Row 0: 4 per step (1 + 4·7 = 29), then the
    # last token alone (its budget leaves no draft): 8 steps, after which it has left the batch.
    assert stats.steps == 29 and stats.row_steps == 29 + 8 and stats.row_tokens == 2 * 29
    assert [c[0].shape[0] for c in oracle.calls] == [2] * 8 + [1] * 21
    assert stats.tau == pytest.approx(58 / 37) and stats.tokens_per_step == pytest.approx(1.0)
    # Drafts within the budget: row 1 proposes draft i while 29 - made > i; row 0 three per step for 7 steps.
    assert stats.drafted == [28 + 7, 27 + 7, 26 + 7] and stats.accepted == [7, 7, 7]
    assert stats.reached == [28 + 7, 7, 7]


def test_statistics_bookkeeping():
    lm = _lm(MTP4, seed=5)
    ids = _ids(1, 4)
    truth = generate(lm.model, ids, 60)
    oracle = NoisyOracle(make_drafter(lm, "mtp"), truth, seed=1)
    got, stats = speculative_generate(lm, ids, 50, oracle)
    assert torch.equal(got, truth[:, :54])
    # The first draft is wrong exactly when the corruption hit position 0 (and the budget left room for it).
    first_wrong = sum(int(d[0, 0] != truth[0, int(n[0]) + 1]) for (_, n, _), d in zip(oracle.calls, oracle.proposed)
                      if int(n[0]) + 2 - 4 < 50)
    assert stats.drafted[0] - stats.accepted[0] == first_wrong
    acc = stats.acceptance
    assert all(a >= b for a, b in zip(acc, acc[1:]))  # prefix acceptance can only fall with depth
    assert stats.reached[0] == stats.drafted[0]
    assert all(r <= a for r, a in zip(stats.reached[1:], stats.accepted[:-1]))
    assert all(0 <= c <= 1 for c in stats.conditional_acceptance)
    # Tokens: 1 from the prefill plus 1 + a per step = 50 exactly (drafts past the budget are never accepted).
    assert 1 + stats.row_tokens == 50 and stats.tau == pytest.approx(stats.tokens_per_step)
    assert stats.tau == pytest.approx(1 + sum(stats.accepted) / stats.steps)


@pytest.mark.parametrize("specs", [MTP4, DSMTP3, TOP], ids=["mtp4", "dsmtp3", "top"])
@pytest.mark.parametrize("b", [1, 4, 5])
def test_eos_handling_matches_generate(specs, b):
    lm = _lm(specs, seed=2)
    ids = _ids(b, 3, seed=9)
    free = generate(lm.model, ids, 30)
    eos = int(free[0, 3 + 4])  # a token row 0 emits early: rows stop at different times
    want = generate(lm.model, ids, 30, eos_id=eos)
    got, _ = speculative_generate(lm, ids, 30, eos_id=eos)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind, specs", [("mtp", MTP4), ("dsmtp", DSMTP3)], ids=["mtp4", "dsmtp3"])
def test_eos_and_every_budget_with_drifting_rows(kind, specs):
    """Budgets 1..30 and eos with rows that accept different lengths (noisy oracle): equal to ``generate``."""
    lm = _lm(specs, seed=8)
    ids = _ids(3, 2, seed=12)
    truth = generate(lm.model, ids, 40)
    eos = int(truth[1, 2 + 9])  # row 1 stops after 10 tokens; the others whenever they emit it
    for n_new in range(1, 31):
        for eos_id in (None, eos):
            want = generate(lm.model, ids, n_new, eos_id=eos_id)
            oracle = NoisyOracle(make_drafter(lm, kind), truth, seed=n_new)
            got, stats = speculative_generate(lm, ids, n_new, oracle, eos_id=eos_id)
            assert torch.equal(got, want), (n_new, eos_id)
            if eos_id is None:  # every row: 1 token from the prefill, the rest from the steps, none past its budget
                assert stats.row_tokens == 3 * (n_new - 1)


def test_zero_tokens_modes_restored_and_errors():
    lm = _lm(MTP4)
    lm.train()
    ids = _ids(2, 3)
    out, stats = speculative_generate(lm, ids, 0)
    assert torch.equal(out, ids) and stats.steps == 0
    speculative_generate(lm, ids, 5)
    assert lm.training and all(m.training for m in lm.modules())
    with pytest.raises(ForesightError, match="no dsmtp heads"):
        make_drafter(lm, "dsmtp")
    with pytest.raises(ForesightError, match="drafter must be one of"):
        make_drafter(lm, "medusa")
    with pytest.raises(ForesightError, match="no MTP heads, DS-MTP modules or TOP head"):
        make_drafter(_lm([{"name": "ntp"}]), "auto")
    assert make_drafter(lm, "auto", n_draft=2).n_draft == 2  # fewer drafts: the first heads only
    with pytest.raises(ValueError):
        speculative_generate(lm, ids[0], 5)  # (P,) instead of (B, P)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_stacked_heads_equal_the_blocks_one_by_one(qkv_bias):
    """The batched MTP-head fast path against the Block modules, prefill then cached continuation."""
    from foresight.generate.stacked import StackedBlocks
    from foresight.model import KVCache

    lm = _lm(MTP4, seed=6, qkv_bias=qkv_bias)
    if qkv_bias:
        with torch.no_grad():
            for head in lm.objectives["mtp"].heads:
                for proj in (head.self_attn.q_proj, head.self_attn.k_proj, head.self_attn.v_proj):
                    proj.bias.normal_(0, 0.3)
    heads = list(lm.objectives["mtp"].heads)
    stack, stack_cache = StackedBlocks(heads), KVCache()
    caches = [KVCache() for _ in heads]
    x = torch.randn(2, 7, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for start, stop in ((0, 4), (4, 5), (5, 7)):
            cos, sin = lm.model.rotary(stop - start, x.device, start)
            got = stack(x[:, start:stop], cos, sin, stack_cache)  # (n, B, m, D)
            for i, (head, cache) in enumerate(zip(heads, caches)):
                want = head(x[:, start:stop], cos, sin, cache)
                assert (got[i] - want).abs().max().item() < 1e-5
