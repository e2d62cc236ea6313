"""Reduced draft vocabulary: drafts are the argmax over the chosen ids only (checked against a from-scratch
computation), the output stays identical to plain greedy decoding; head training on cached trunk states
computes the objectives' own losses (full vocabulary) and lowers them."""

from __future__ import annotations

import pytest
import torch

from foresight.batch import Batch
from foresight.generate import generate, make_drafter, speculative_generate
from foresight.generate.distill import greedy_with_states
from foresight.model import ModelConfig
from foresight.train.cached_heads import (
    TrunkCache,
    _count,
    cache_trunk,
    draft_accuracy,
    frequent_ids,
    head_losses,
    init_from_last_block,
    train_heads,
)
from foresight.train.lm import TrainableLM

from helpers import randomize_weights

pytestmark = pytest.mark.usefixtures("one_thread")

V = 29
MTP3 = [{"name": "ntp"}, {"name": "mtp", "n": 4}]
DSMTP2 = [{"name": "ntp"}, {"name": "dsmtp", "preset": "top_paper", "depth": 2}]
DEEPSEEK = [{"name": "ntp"}, {"name": "dsmtp", "preset": "deepseek_v3", "depth": 2}]


def _lm(specs, seed=0, dtype=torch.float64) -> TrainableLM:
    torch.manual_seed(seed)
    lm = TrainableLM(ModelConfig(vocab_size=V, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2,
                                 intermediate_size=40, max_seq_len=16), specs)
    randomize_weights(lm, seed + 1, norm_scale=0.2)  # O(1) activations: well-separated logits
    return lm.to(dtype).eval()


SUB = torch.tensor([3, 17, 0, 8, 25, 11, 5])  # a draft vocabulary, in no particular order


@torch.no_grad()
def _reference(lm, kind: str, seq: torch.Tensor) -> torch.Tensor:
    """Drafts from scratch (no caches): hidden states -> norm -> scores over SUB only -> ids. (B, D)."""
    model, n = lm.model, seq.shape[1] - 1
    out = model.trunk(seq[:, :n])
    w = model.lm_head.weight[SUB]  # (V', D)
    if kind == "mtp":
        return torch.stack([SUB[(model.norm(h(out.last_input, out.cos, out.sin)[:, -1]) @ w.T).argmax(-1)]
                            for h in lm.objectives["mtp"].heads], dim=1)
    obj = lm.objectives["dsmtp"]
    hyp, h, drafts = seq, obj.h0(out), []
    for k, module in enumerate(obj.layers, start=1):
        h = module(h, model.embed_tokens(hyp[:, k : n + k]), out.cos, out.sin)
        norm = module.norm if module.norm is not None else model.norm
        d = SUB[(norm(h[:, -1]) @ w.T).argmax(-1)]
        drafts.append(d)
        hyp = torch.cat([hyp, d[:, None]], dim=1)
    return torch.stack(drafts, dim=1)


@pytest.mark.parametrize("specs, kind", [(MTP3, "mtp"), (DSMTP2, "dsmtp"), (DEEPSEEK, "dsmtp")])
@pytest.mark.parametrize("stacked", [True, False])
def test_drafts_are_the_argmax_over_the_draft_vocabulary(specs, kind, stacked):
    lm = _lm(specs)
    seq = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(2))  # x[0..5] committed, x[6] pending
    drafter = make_drafter(lm, kind, stacked=stacked, draft_vocab=SUB)
    drafter.reset()
    with torch.no_grad():
        drafts = drafter.propose(lm.model.trunk(seq[:, :6]), seq, 0, 6)
    assert torch.equal(drafts, _reference(lm, kind, seq))
    assert bool(torch.isin(drafts, SUB).all())
    full = make_drafter(lm, kind, stacked=stacked)
    full.reset()
    with torch.no_grad():
        assert not torch.equal(full.propose(lm.model.trunk(seq[:, :6]), seq, 0, 6), drafts)  # the restriction bites


@pytest.mark.parametrize("specs, kind", [(MTP3, "mtp"), (DSMTP2, "dsmtp")])
@pytest.mark.parametrize("b", [1, 3])
def test_output_identical_with_a_draft_vocabulary(specs, kind, b):
    lm = _lm(specs, seed=3, dtype=torch.float32)
    ids = torch.randint(0, V, (b, 4), generator=torch.Generator().manual_seed(5))
    got, stats = speculative_generate(lm, ids, 25, make_drafter(lm, kind, draft_vocab=SUB))
    assert torch.equal(got, generate(lm.model, ids, 25)) and stats.steps > 0


def test_frequent_ids():
    tokens = torch.tensor([[4, 4, 2, 9, 9, 9], [2, 4, 7, 0, 7, 1]])  # counts: 4:3, 9:3, 2:2, 7:2, 0:1, 1:1
    assert frequent_ids(tokens, 5, 12).tolist() == [4, 9, 2, 7, 0]
    assert frequent_ids(tokens, 50, 12).shape == (12,)


@pytest.mark.parametrize("specs", [MTP3, DSMTP2, DEEPSEEK], ids=["mtp", "dsmtp", "deepseek"])
def test_cached_losses_equal_the_objectives_losses(specs):
    """With the whole vocabulary and every target, the cached-state losses are the objective's own sums."""
    lm = _lm(specs, seed=5)
    key = specs[1]["name"]
    tokens = torch.randint(0, V, (4, 13), generator=torch.Generator().manual_seed(6))
    cache = cache_trunk(lm.model, tokens, batch=3)
    with torch.no_grad():
        direct = lm.model.trunk(tokens[:, :12])
        assert torch.equal(cache.last_input, direct.last_input) and torch.equal(cache.final, direct.final)
        cos, sin = lm.model.rotary(12, tokens.device)
        batch = Batch(tokens, 12)
        ours = head_losses(lm, key, cache.rows(torch.arange(4), lm.model, cos, sin), batch, lm.model.lm_head.weight,
                           torch.arange(V), first_target=0)
        metrics = lm.objectives[key](direct, batch, lm.model).metrics
    count = 12 * 4  # next-token count: the objectives' divisor
    prefix = "mtp_head" if key == "mtp" else "dsmtp_depth"
    for k, s in enumerate(ours, start=1):
        torch.testing.assert_close(s / count, metrics[f"{prefix}{k}"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("specs", [MTP3, DSMTP2], ids=["mtp", "dsmtp"])
def test_per_row_first_target_equals_row_by_row(specs):
    """A (B,) first_target (distilled rows beside real-text rows) scores each row as its own int would."""
    lm = _lm(specs, seed=5)
    key = specs[1]["name"]
    tokens = torch.randint(0, V, (3, 13), generator=torch.Generator().manual_seed(6))
    cache = cache_trunk(lm.model, tokens)
    cos, sin = lm.model.rotary(12, tokens.device)
    vocab = torch.tensor([4, 0, 7, 9, 2, 11, 5])  # a draft vocabulary: some targets fall outside it
    to_sub = torch.full((V,), -100, dtype=torch.long)
    to_sub[vocab] = torch.arange(len(vocab))
    w_sub = lm.model.lm_head.weight[vocab]
    firsts = torch.tensor([0, 5, 9])
    with torch.no_grad():
        both = head_losses(lm, key, cache.rows(torch.arange(3), lm.model, cos, sin), Batch(tokens, 12), w_sub,
                           to_sub, firsts)
        alone = [head_losses(lm, key, cache.rows(torch.tensor([r]), lm.model, cos, sin), Batch(tokens[r : r + 1], 12),
                             w_sub, to_sub, int(firsts[r])) for r in range(3)]
    for k, s in enumerate(both):
        torch.testing.assert_close(s, sum(a[k] for a in alone), rtol=1e-10, atol=1e-10)
        assert not torch.isclose(s, alone[0][k] * 3)  # the rows do differ
    assert int(_count(Batch(tokens, 12), 1, to_sub, firsts)) == sum(
        int(_count(Batch(tokens[r : r + 1], 12), 1, to_sub, int(firsts[r]))) for r in range(3))


@pytest.mark.parametrize("specs", [MTP3, DSMTP2], ids=["mtp", "dsmtp"])
def test_cached_head_training_learns_and_leaves_the_trunk(specs):
    """Sequences the trunk itself wrote: the heads learn them (loss falls, accuracy rises); the trunk is
    bit-identical after training."""
    lm = _lm(specs, seed=8, dtype=torch.float32)
    key = specs[1]["name"]
    init_from_last_block(lm, key)
    prompts = torch.randint(0, V, (24, 3), generator=torch.Generator().manual_seed(9))
    tokens, final, last_input = greedy_with_states(lm.model, prompts, 13)  # (24, 16): greedy continuations
    assert torch.equal(tokens, generate(lm.model, prompts, 13))
    full = cache_trunk(lm.model, tokens)  # the states decoding kept equal a full forward's, up to rounding
    torch.testing.assert_close(final, full.final, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last_input, full.last_input, rtol=1e-4, atol=1e-4)
    vocab = frequent_ids(tokens[:, 3:], 20, V)
    cache = TrunkCache(final, last_input)
    trunk0 = {k: v.clone() for k, v in lm.model.state_dict().items()}
    before = draft_accuracy(lm, key, tokens, cache, vocab, first_target=3)
    log = train_heads(lm, key, tokens, cache, vocab, steps=80, batch=8, lr=3e-3, first_target=3, warmup=5)
    after = draft_accuracy(lm, key, tokens, cache, vocab, first_target=3)
    assert all(torch.equal(v, trunk0[k]) for k, v in lm.model.state_dict().items())
    for k in range(1, len(before) + 1):  # batches are random: compare means over the first and last steps
        first = sum(r[f"loss{k}"] for r in log[:5]) / 5
        last = sum(r[f"loss{k}"] for r in log[-10:]) / 10
        assert last < 0.8 * first, (k, first, last)
    assert sum(after) > sum(before) + 0.2, (before, after)


def _reference_states(lm, key: str, out, batch: Batch) -> list[tuple[torch.Tensor, torch.nn.Module]]:
    """Each head's / depth's hidden state (B, T, D) and the norm before the shared head, written out per objective
    (Meta MTP §2: heads read the last block's input; DeepSeek-V3 §2.2: module k reads h_{k-1} and Emb(x[t+k]))."""
    obj, model, t = lm.objectives[key], lm.model, batch.seq_len
    if key == "mtp":
        return [(head(out.last_input, out.cos, out.sin), model.norm) for head in obj.heads]
    h = out.hidden if obj.cfg.h0 == "post_norm" else out.final
    states = []
    for k, module in enumerate(obj.layers, start=1):
        ids = torch.zeros_like(batch.tokens[:, :t])  # x[t+k], id 0 past the stream
        avail = max(0, min(t, batch.tokens.shape[1] - k))
        ids[:, :avail] = batch.tokens[:, k : k + avail]
        h = module(h, model.embed_tokens(ids), out.cos, out.sin)
        states.append((h, module.norm if module.norm is not None else model.norm))
    return states


@pytest.mark.parametrize("specs", [MTP3, DSMTP2, DEEPSEEK], ids=["mtp", "dsmtp", "deepseek"])
def test_cached_losses_and_accuracy_equal_a_written_out_reference_bit_for_bit(specs):
    """Sub-vocabulary loss sums, per-row first targets and teacher-forced accuracy, against the per-objective
    computation written out here: equal exactly, not just closely."""
    lm = _lm(specs, seed=11)
    key = specs[1]["name"]
    tokens = torch.randint(0, V, (3, 11), generator=torch.Generator().manual_seed(12))
    cache = cache_trunk(lm.model, tokens)
    cos, sin = lm.model.rotary(10, tokens.device)
    vocab = torch.tensor([4, 0, 7, 9, 2, 11, 5, 20])
    to_sub = torch.full((V,), -100, dtype=torch.long)
    to_sub[vocab] = torch.arange(len(vocab))
    w_sub = lm.model.lm_head.weight.detach()[vocab]
    firsts = torch.tensor([0, 4, 7])
    batch = Batch(tokens, 10)
    with torch.no_grad():
        out = cache.rows(torch.arange(3), lm.model, cos, sin)
        got = head_losses(lm, key, out, batch, w_sub, to_sub, firsts)
        want = []
        for k, (h, norm) in enumerate(_reference_states(lm, key, out, batch), start=1):
            full = torch.full((3, 10), -100, dtype=torch.long)
            full[:, : 10 - k] = tokens[:, 1 + k :]  # x[t+1+k]
            sub = torch.where(full >= 0, to_sub[full.clamp(min=0)], -100)
            sub = sub.masked_fill(torch.arange(10)[None, :] + 1 + k < firsts[:, None], -100)
            logits = (norm(h) @ w_sub.T).flatten(0, 1)
            want.append(torch.nn.functional.cross_entropy(logits, sub.flatten(), ignore_index=-100, reduction="sum"))
        accuracy = draft_accuracy(lm, key, tokens, cache, vocab, first_target=3, batch=2)
        hits = []
        for k, (h, norm) in enumerate(_reference_states(lm, key, out, batch), start=1):
            guess = vocab[(norm(h) @ w_sub.T).argmax(-1)]  # (B, T)
            agree = guess[:, : 10 - k] == tokens[:, 1 + k :]  # (B, 10 - k): positions whose target exists
            valid = torch.arange(10 - k) + 1 + k >= 3  # target index >= first_target
            hits.append(int((agree & valid).sum()) / (3 * int(valid.sum())))
    assert len(got) == len(want) == len(accuracy) > 0
    for g, w in zip(got, want):
        assert torch.equal(g, w), (g, w)
    assert accuracy == hits and 0 < sum(hits), hits


@pytest.mark.parametrize("specs", [MTP3, DSMTP2, DEEPSEEK], ids=["mtp", "dsmtp", "deepseek"])
def test_warm_start_copies_the_last_block_and_passes_the_hidden_state(specs):
    """``init_from_last_block``: every head block is the trunk's last block; a DS-MTP projection is [s·I, 0] in its
    concatenation order (hidden part scaled by s, embedding part zero), its bias zero, an own norm the trunk's."""
    lm = _lm(specs, seed=13)
    key = specs[1]["name"]
    init_from_last_block(lm, key, scale=0.75)
    obj, last, d = lm.objectives[key], lm.model.layers[-1].state_dict(), 24
    blocks = list(obj.heads) if key == "mtp" else [m.block for m in obj.layers]
    assert len(blocks) == (3 if key == "mtp" else 2)
    for block in blocks:
        state = block.state_dict()
        assert state.keys() == last.keys() and all(torch.equal(state[n], last[n]) for n in last)
    for m in ([] if key == "mtp" else obj.layers):
        hidden_part = m.eh_proj.weight[:, :d] if m.hidden_first else m.eh_proj.weight[:, d:]
        embed_part = m.eh_proj.weight[:, d:] if m.hidden_first else m.eh_proj.weight[:, :d]
        assert torch.equal(hidden_part, 0.75 * torch.eye(d, dtype=hidden_part.dtype))
        assert not embed_part.any()
        assert m.eh_proj.bias is None or not m.eh_proj.bias.any()
        assert m.norm is None or torch.equal(m.norm.weight, lm.model.norm.weight)
    assert specs is not DEEPSEEK or (obj.layers[0].norm is not None and not obj.layers[0].hidden_first)
