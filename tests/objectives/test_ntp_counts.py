"""NTP against F.cross_entropy, label shifting, and the (loss_sum, count) contract shared by every objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foresight.batch import Batch
from foresight.model import ModelConfig
from foresight.objectives import IGNORE_INDEX, shifted_labels
from foresight.train.lm import TrainableLM

B, T, V = 3, 11, 37

SPECS = [
    {"name": "ntp"},
    {"name": "top", "window": 7},
    {"name": "top", "window": 4096, "normalize": "paper", "scores": "paper"},
    {"name": "mtp", "n": 3},
    {"name": "dsmtp", "preset": "top_paper", "depth": 2},
    {"name": "dsmtp", "preset": "deepseek_v3"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_lm(specs, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, hidden_size=16, n_layers=2, n_heads=2, init_std=0.2)
    return TrainableLM(cfg, specs)


def make_batch(extra, masked, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T + extra), generator=g)
    tokens[0, T:] = IGNORE_INDEX  # row 0: every label past the inputs ignored (TOP rows without a target)
    tokens[1, -1] = -1  # a negative id: never a label
    mask = (torch.rand(B, T, generator=g) < 0.7) if masked else None
    return Batch(tokens, T, mask)


def test_shifted_labels_literal():
    batch = make_batch(4, masked=True)
    tokens, length = batch.tokens, batch.tokens.shape[1]
    for offset in range(6):
        got = shifted_labels(batch, offset)
        assert got.shape == (B, T) and got.dtype == torch.long
        for b in range(B):
            for t in range(T):
                j = t + 1 + offset
                want = tokens[b, j].item() if j < length else IGNORE_INDEX
                if want < 0 or not batch.loss_mask[b, t]:
                    want = IGNORE_INDEX
                assert got[b, t].item() == want, (offset, b, t)


@pytest.mark.parametrize("extra", [1, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_ntp_is_mean_cross_entropy(extra, masked):
    lm = make_lm([{"name": "ntp"}])
    batch = make_batch(extra, masked)
    res = lm(batch)["ntp"]
    logits = lm.model(batch.input_ids)  # the inference path: (B, T, V)
    labels = batch.tokens[:, 1 : T + 1].clone()
    labels[labels < 0] = IGNORE_INDEX
    if masked:
        labels[~batch.loss_mask] = IGNORE_INDEX
    ref = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert int(res.count) == int((labels != IGNORE_INDEX).sum())
    torch.testing.assert_close(res.loss_sum / res.count, ref, rtol=1e-5, atol=1e-6)
    params = [p for p in lm.parameters()]
    g1 = torch.autograd.grad(res.loss_sum / res.count, params)
    g2 = torch.autograd.grad(ref, params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize("extra", [1, 5, 130])
@pytest.mark.parametrize("masked", [False, True])
def test_count_equals_forward_count(spec, extra, masked):
    lm = make_lm([spec])
    batch = make_batch(extra, masked)
    (key,) = lm.objectives.keys()
    res = lm(batch)[key]
    count = lm.objectives[key].count(batch)
    assert res.count.dim() == 0 and not res.count.is_floating_point()
    assert torch.equal(count, res.count)
    assert torch.equal(lm.counts(batch)[key], res.count)
    assert int(res.count) > 0 and torch.isfinite(res.loss_sum) and res.loss_sum.item() > 0


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_sum_and_count_compose_across_micro_batches(spec):
    """Splitting a batch and dividing the summed loss by the summed count gives the full batch's loss:
    the reason objectives return (sum, count) rather than a mean."""
    lm = make_lm([spec])
    batch = make_batch(6, masked=True)
    (key,) = lm.objectives.keys()
    full = lm(batch)[key]
    parts = [Batch(batch.tokens[s], T, batch.loss_mask[s]) for s in (slice(0, 1), slice(1, 3))]
    outs = [lm(p)[key] for p in parts]
    total = sum(o.loss_sum for o in outs)
    count = sum(o.count for o in outs)
    assert int(count) == int(full.count)
    torch.testing.assert_close(total / count, full.loss_sum / full.count, rtol=1e-5, atol=1e-6)


def test_trainable_lm_keys_and_lookahead():
    lm = make_lm([{"name": "ntp"}, {"name": "top", "window": 300}, {"name": "mtp", "n": 3},
                  {"name": "dsmtp", "depth": 2}])
    assert list(lm.objectives.keys()) == ["ntp", "top", "mtp", "dsmtp"]
    assert lm.lookahead == 128  # TOP needs K = min(window, 128) tokens past seq_len
    batch = make_batch(lm.lookahead, masked=False)
    out = lm(batch)
    assert set(out) == set(lm.objectives) and all(torch.equal(out[k].count, c) for k, c in lm.counts(batch).items())
