"""The trunk's last block on the loss-masked rows only (issue 13): same hidden states, losses and gradients as the
full trunk, on small odd shapes, for every objective that asks for it (``rows_needed``)."""

from __future__ import annotations

import pytest
import torch

from foresight.batch import Batch
from foresight.model import ModelConfig, Transformer
from foresight.objectives import IGNORE_INDEX
from foresight.train.lm import TrainableLM

B, T, V = 3, 9, 23

pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": V, "hidden_size": 24, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                          "intermediate_size": 40, "init_std": 0.2, **kw})


def make_batch(mask_kind: str, extra: int = 5, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T + extra), generator=g)
    tokens[0, T:] = IGNORE_INDEX  # row 0: nothing past the inputs (TOP rows without a target)
    if mask_kind == "columns":  # the star graph's layout: the same answer positions in every row
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, [2, 6, 7]] = True
    else:  # ragged: each row its own positions, one row with none
        mask = torch.rand(B, T, generator=g) < 0.4
        mask[1] = False
        mask[2, T - 1] = True
    return Batch(tokens, T, mask)


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("mask_kind", ["columns", "ragged"])
def test_trunk_rows_equals_full_trunk(n_layers, mask_kind):
    torch.manual_seed(0)
    model = Transformer(make_cfg(n_layers=n_layers))
    batch = make_batch(mask_kind)
    full = model.trunk(batch.input_ids)
    part = model.trunk(batch.input_ids, rows=batch.loss_mask)
    assert full.rows is None and part.rows is batch.loss_mask
    n = int(batch.loss_mask.sum())
    assert part.hidden.shape == (n, 24) and part.final.shape == (n, 24)
    torch.testing.assert_close(part.hidden, full.hidden[batch.loss_mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(part.final, full.final[batch.loss_mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(part.last_input, full.last_input, rtol=0, atol=0)


SPECS = {
    "ntp": [{"name": "ntp"}],
    "top": [{"name": "top", "window": 6}],
    "ntp+top": [{"name": "ntp"}, {"name": "top", "window": 4096, "weight": 2.0}],
    "ntp+top-paper": [{"name": "ntp"}, {"name": "top", "window": 5, "scores": "paper", "normalize": "paper"}],
}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("mask_kind", ["columns", "ragged"])
@pytest.mark.parametrize("specs", SPECS.values(), ids=SPECS.keys())
def test_rows_path_losses_and_gradients_equal_full_forward(specs, mask_kind, checkpointing):
    """``forward_backward`` (last block on the masked rows) against the reference: the full trunk's
    ``forward`` and one backward of the weighted sum."""
    torch.manual_seed(0)
    lm = TrainableLM(make_cfg(), specs)
    for block in lm.model.layers:
        block.checkpointing = checkpointing
    batch = make_batch(mask_kind)
    assert torch.equal(lm.rows_needed(batch), batch.loss_mask)
    scales = {k: 0.37 * (i + 1) for i, k in enumerate(lm.objectives)}
    got = lm.forward_backward(batch, scales)
    got_grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    lm.zero_grad(set_to_none=True)
    want = lm(batch)
    sum(scales[k] * o.loss_sum for k, o in want.items()).backward()
    want_grads = {n: p.grad for n, p in lm.named_parameters() if p.grad is not None}
    for k in want:
        assert torch.equal(got[k].count, want[k].count)
        torch.testing.assert_close(got[k].loss_sum, want[k].loss_sum.detach(), rtol=1e-5, atol=1e-6)
    assert set(got_grads) == set(want_grads)
    for n, g in want_grads.items():
        torch.testing.assert_close(got_grads[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_rows_only_when_every_objective_allows():
    batch = make_batch("columns")
    lm = TrainableLM(make_cfg(), [{"name": "ntp"}, {"name": "mtp", "n": 2}])
    assert lm.rows_needed(batch) is None  # MTP reads the last block's input at every position
    lm = TrainableLM(make_cfg(), [{"name": "ntp"}, {"name": "dsmtp", "depth": 2}])
    assert lm.rows_needed(batch) is None
    lm = TrainableLM(make_cfg(), [{"name": "ntp"}])
    assert lm.rows_needed(Batch(batch.tokens, T)) is None  # no loss mask: every position is trained


def test_moe_trunk_ignores_rows():
    """An MoE last block's balance loss sees every token, so the trunk keeps the full path."""
    torch.manual_seed(0)
    model = Transformer(make_cfg(ffn="moe", moe_experts=3, moe_top_k=2))
    batch = make_batch("columns")
    out = model.trunk(batch.input_ids, rows=batch.loss_mask)
    assert out.rows is None and out.hidden.shape == (B, T, 24)
