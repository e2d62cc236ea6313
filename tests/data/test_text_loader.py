"""Packed loader: look-ahead taken from the stream, every token used, seeded order, document boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foresight.data.loader import RESERVE, PackedLoader, doc_horizon, eval_windows
from foresight.data.shards import TokenStream
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.objectives import shifted_labels
from foresight.objectives.base import IGNORE_INDEX
from foresight.objectives.top import MAX_SLOTS, top_targets
from foresight.train.lm import TrainableLM

EOS = 0


def _stream(tmp_path, n: int = 5000, seed: int = 0, split_at: int | None = 1234) -> tuple[TokenStream, np.ndarray]:
    """Random ids 1..49 with an EOS every ~20 tokens, stored in two shards (a sample straddles them)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, n)
    ids[rng.random(n) < 0.05] = EOS
    cut = split_at or n
    paths = []
    for i, part in enumerate((ids[:cut], ids[cut:])):
        path = tmp_path / f"s{i}.bin"
        part.astype("<u2").tofile(path)
        paths.append(path)
    return TokenStream(paths, [cut, n - cut], "uint16"), ids


@pytest.mark.parametrize("lookahead", [1, 4, 128])
def test_consecutive_samples_overlap_by_exactly_the_lookahead(tmp_path, lookahead):
    stream, ids = _stream(tmp_path)
    loader = PackedLoader(stream, 37, lookahead, 3, seed=0, shuffle=False)
    assert loader.samples == (5000 - 128) // 37  # the count reserves 128 tokens whatever the look-ahead
    for i in range(loader.samples - 1):
        w, nxt = loader.window(i), loader.window(i + 1)
        assert w.tolist() == ids[i * 37 : i * 37 + 37 + lookahead].tolist()
        assert w[37:].tolist() == nxt[:lookahead].tolist()  # the look-ahead is the next sample's first inputs
    batch = loader.batch(0)
    assert batch.tokens.shape == (3, 37 + lookahead) and batch.seq_len == 37 and batch.horizon is None


def test_the_reserve_covers_the_largest_top_lookahead():
    # The loader keeps RESERVE look-ahead tokens per sample without knowing the objectives; TOP's look-ahead is
    # min(window, MAX_SLOTS), so with RESERVE >= MAX_SLOTS every TOP run samples the same windows.
    assert RESERVE == MAX_SLOTS == 128


def test_every_token_is_an_input_once_per_epoch(tmp_path):
    stream, ids = _stream(tmp_path)
    loader = PackedLoader(stream, 50, 128, 7, seed=3)
    seen = np.zeros(len(ids), dtype=int)
    steps = -(-loader.samples // 7)  # the last batch runs into the next epoch
    for step in range(steps):
        for s, row in zip(loader.sample_ids(step), loader.batch(step).tokens):
            if step * 7 + list(loader.sample_ids(step)).index(s) < loader.samples:
                seen[s * 50 : s * 50 + 50] += 1
                assert row[:50].tolist() == ids[s * 50 : s * 50 + 50].tolist()
    covered = loader.samples * 50
    assert (seen[:covered] == 1).all() and (seen[covered:] == 0).all()
    assert len(ids) - covered < 50 + 128  # what is never an input: less than one sequence plus the reserve


def test_order_is_seeded_pure_and_shared_by_every_objective(tmp_path):
    stream, _ = _stream(tmp_path)
    ntp = PackedLoader(stream, 40, 1, 11, seed=1)
    top = PackedLoader(stream, 40, 128, 11, seed=1)
    other = PackedLoader(stream, 40, 1, 11, seed=2)
    assert ntp.samples == 121  # 11 batches of 11 per epoch
    later = ntp.batch(9).tokens.clone()
    assert torch.equal(PackedLoader(stream, 40, 1, 11, seed=1).batch(9).tokens, later)  # no hidden state
    for step in (0, 5, 10, 11, 40):
        a, b = ntp.batch(step), top.batch(step)
        assert torch.equal(a.input_ids, b.input_ids)  # NTP and TOP runs see the same sequences in the same order
    assert not torch.equal(other.batch(0).tokens, ntp.batch(0).tokens)
    epoch0 = np.concatenate([ntp.sample_ids(s) for s in range(11)])
    epoch1 = np.concatenate([ntp.sample_ids(s) for s in range(11, 22)])
    assert sorted(epoch0) == sorted(epoch1) == list(range(121)) and not np.array_equal(epoch0, epoch1)
    assert ntp.state(3) != ntp.state(4) and ntp.state(3) == PackedLoader(stream, 40, 1, 11, seed=1).state(3)
    odd = PackedLoader(stream, 40, 1, 8, seed=1)  # 121 = 15 · 8 + 1: batch 15 spans two epochs
    assert len(set(odd.sample_ids(15))) == 8


def test_too_little_data_is_a_clear_error(tmp_path):
    stream, _ = _stream(tmp_path, n=200, split_at=None)
    with pytest.raises(ForesightError, match="fewer than one sequence"):
        PackedLoader(stream, 100, 1, 2, seed=0)


def test_horizon_is_the_offset_of_the_next_eos():
    tokens = torch.tensor([[5, 0, 7, 8, 0, 9, 9, 9, 3]])
    h = doc_horizon(tokens, seq_len=6, eos_id=0)
    # t=0: next tokens 0,... -> EOS at offset 0; t=1: 7, 8, 0 -> 2; t=3: 0 -> 0; t=4..5: no EOS ahead -> no limit
    assert h.tolist() == [[0, 2, 1, 0, 9, 9]]
    rng = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (3, 40), generator=rng)
    h = doc_horizon(tokens, 30, 0)
    for b in range(3):
        for t in range(30):
            ahead = tokens[b, t + 1 :].tolist()
            expect = ahead.index(0) if 0 in ahead else 40
            assert h[b, t] == expect


def test_targets_stop_at_document_boundaries_when_asked(tmp_path):
    stream, ids = _stream(tmp_path)
    crossing = PackedLoader(stream, 64, 128, 4, seed=0, eos_id=EOS)
    stopping = PackedLoader(stream, 64, 128, 4, seed=0, eos_id=EOS, cross_documents=False)
    a, b = crossing.batch(2), stopping.batch(2)
    assert torch.equal(a.tokens, b.tokens) and a.horizon is None and b.horizon is not None
    # NTP is untouched; MTP-style labels at offset k are dropped exactly where an EOS lies in between.
    assert torch.equal(shifted_labels(a, 0), shifted_labels(b, 0))
    for k in (1, 3):
        la, lb = shifted_labels(a, k), shifted_labels(b, k)
        for r in range(4):
            for t in range(64):
                between = b.tokens[r, t + 1 : t + 1 + k].tolist()
                assert lb[r, t] == (IGNORE_INDEX if EOS in between else la[r, t])
    # TOP ranks only the tokens up to and including the next EOS.
    ids_b, w_b = top_targets(b.tokens, 64, 4096, horizon=b.horizon)
    for r in range(4):
        for t in (0, 17, 63):
            upcoming = b.tokens[r, t + 1 :].tolist()
            end = upcoming.index(EOS) + 1 if EOS in upcoming[:128] else 128
            truncated = torch.tensor([upcoming[:end] + [IGNORE_INDEX] * (128 - end)])
            ref_ids, ref_w = top_targets(torch.cat([b.tokens[r : r + 1, : t + 1], truncated], 1), t + 1, 4096)
            torch.testing.assert_close(w_b[r, t], ref_w[0, t])
            assert torch.equal(ids_b[r, t], ref_ids[0, t])


def test_document_boundaries_through_the_objectives(tmp_path):
    """A whole TOP + MTP + DS-MTP model trains on batches that stop at boundaries (finite, smaller counts)."""
    stream, _ = _stream(tmp_path)
    cfg = ModelConfig(vocab_size=64, hidden_size=16, n_layers=2, n_heads=2, intermediate_size=32)
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "top", "window": 64}, {"name": "mtp", "n": 3},
                           {"name": "dsmtp", "depth": 2}])
    crossing = PackedLoader(stream, 32, lm.lookahead, 2, seed=0, eos_id=EOS).batch(0)
    stopping = PackedLoader(stream, 32, lm.lookahead, 2, seed=0, eos_id=EOS, cross_documents=False).batch(0)
    out_c, out_s = lm(crossing), lm(stopping)
    assert torch.equal(out_c["ntp"].loss_sum, out_s["ntp"].loss_sum)
    for key in ("top", "mtp", "dsmtp"):
        assert torch.isfinite(out_s[key].loss_sum)
        assert not torch.equal(out_c[key].loss_sum, out_s[key].loss_sum)
    sum(o.loss_sum / o.count for o in out_s.values()).backward()


def test_eval_windows_are_fixed_and_shared(tmp_path):
    stream, ids = _stream(tmp_path)
    one = eval_windows(stream, 100, 1, 8, max_batches=3)
    top = eval_windows(stream, 100, 128, 8, max_batches=3)
    assert [w.shape for w in one] == [(8, 101)] * 3
    for a, b in zip(one, top):
        assert np.array_equal(a[:, :100], b[:, :100])
    assert one[0][1].tolist() == ids[100:201].tolist()
    every = eval_windows(stream, 100, 1, 8, max_batches=None)
    assert sum(len(w) for w in every) == (5000 - 128) // 100 == 48 and len(every) == 6
