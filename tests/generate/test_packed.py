"""Pre-packed (oneDNN) Linears: the same outputs as the plain model on tiny odd-shaped models (tied embeddings, qkv
bias, MTP / DS-MTP / TOP heads), greedy and speculative tokens identical, re-packing after a weight change, the
fallback where packing cannot apply, and the refusal to train."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.generate import generate, speculative_generate
from foresight.generate.packed import PackedLinear, is_packed, mkldnn_linear_available, pack_linears, unpack_linears
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

from helpers import randomize_weights

needs_mkldnn = pytest.mark.skipif(not mkldnn_linear_available(), reason="this PyTorch has no oneDNN inner product")

SPECS = [{"name": "ntp"}, {"name": "mtp", "n": 3}, {"name": "dsmtp", "depth": 2}, {"name": "top", "window": 6}]


def _lm(tie: bool, qkv_bias: bool, specs=SPECS, seed: int = 0) -> TrainableLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=29, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=37,
                      max_seq_len=64, tie_embeddings=tie, qkv_bias=qkv_bias)
    lm = TrainableLM(cfg, specs)
    randomize_weights(lm, seed + 1, norm_scale=0.2)
    return lm.eval()


def _packed_copy(lm: TrainableLM) -> TrainableLM:
    """A copy of ``lm`` sharing its Parameters, with packed Linears."""
    twin = copy.deepcopy(lm, memo={id(p): p for p in lm.parameters()})
    pack_linears(twin)  # the whole TrainableLM: the objectives' heads too
    return twin


@needs_mkldnn
@pytest.mark.parametrize("tie, qkv_bias", [(False, False), (True, True)])
def test_packed_outputs_match_plain(tie, qkv_bias):
    lm = _lm(tie, qkv_bias)
    twin = _packed_copy(lm)
    linears = [m for m in twin.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, PackedLinear) for m in linears)  # trunk, head, MTP, DS-MTP, TOP
    assert not is_packed(lm) and is_packed(twin)
    if tie:
        assert twin.model.lm_head.weight is twin.model.embed_tokens.weight
    tokens = torch.randint(0, 29, (3, 17 + lm.lookahead), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ids = tokens[:, :11]
        torch.testing.assert_close(twin.model(ids), lm.model(ids), rtol=1e-5, atol=1e-5)  # (3, 11, 29)
        batch = Batch(tokens, seq_len=17)
        want, got = lm(batch), twin(batch)  # every objective's loss: the heads' Linears too
        for key in want:
            torch.testing.assert_close(got[key].loss_sum, want[key].loss_sum, rtol=1e-5, atol=1e-5)
    # The state dict is the plain model's: same names, same tensors.
    assert twin.state_dict().keys() == lm.state_dict().keys()


@needs_mkldnn
@pytest.mark.parametrize("drafter", ["mtp", "dsmtp", "top", "ngram", "ngram+mtp"])
@pytest.mark.parametrize("b", [1, 3])
def test_greedy_and_speculative_tokens_identical(drafter, b):
    lm = _lm(True, True)
    twin = _packed_copy(lm)
    ids = torch.randint(0, 29, (b, 7), generator=torch.Generator().manual_seed(b))
    want = generate(lm.model, ids, 20)
    assert torch.equal(generate(twin.model, ids, 20), want)
    got, _ = speculative_generate(twin, ids, 20, drafter)
    assert torch.equal(got, want)


@needs_mkldnn
def test_packed_switch_and_unpack():
    lm = _lm(False, False, [{"name": "ntp"}, {"name": "mtp", "n": 3}])
    ids = torch.randint(0, 29, (1, 9), generator=torch.Generator().manual_seed(3))
    want = generate(lm.model, ids, 12)
    got, _ = speculative_generate(lm, ids, 12, "mtp", packed=True)
    assert torch.equal(got, want) and is_packed(lm.model) and is_packed(lm.objectives)
    weights = [p for p in lm.parameters()]
    unpack_linears(lm)
    assert not is_packed(lm) and all(a is b for a, b in zip(weights, lm.parameters()))
    assert all(type(m) is nn.Linear for m in lm.modules() if isinstance(m, nn.Linear))


@needs_mkldnn
def test_repacks_after_an_in_place_weight_change():
    lm = _lm(False, False, [{"name": "ntp"}])
    twin = _packed_copy(lm)
    ids = torch.randint(0, 29, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        twin.model(ids)
        lm.model.lm_head.weight.mul_(-1.5)  # shared: the packed copy is stale now
        torch.testing.assert_close(twin.model(ids), lm.model(ids), rtol=1e-5, atol=1e-5)


@needs_mkldnn
def test_refuses_training_and_falls_back_under_autograd():
    lm = _lm(False, False, [{"name": "ntp"}])
    pack_linears(lm)
    ids = torch.randint(0, 29, (1, 5))
    out = lm.model(ids)  # eval mode, autograd recording: the plain op, so gradients flow
    out.sum().backward()
    assert lm.model.lm_head.weight.grad is not None
    lm.train()
    with pytest.raises(ForesightError, match="packed for inference.*unpack_linears"):
        lm.model(ids)
    unpack_linears(lm)
    lm.model(ids).sum().backward()  # trains again


def test_fallback_leaves_the_model_unchanged(capsys):
    lm = _lm(False, False, [{"name": "ntp"}])
    lm.model.to(torch.float64)  # packing is for fp32 weights
    assert pack_linears(lm.model) is lm.model
    assert not is_packed(lm.model)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("foresight: note: Linears not packed: packing is for fp32")


def test_fallback_without_mkldnn(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    lm = _lm(False, False, [{"name": "ntp"}])
    pack_linears(lm.model)
    assert not is_packed(lm.model)
    assert "no oneDNN" in capsys.readouterr().err


@needs_mkldnn
def test_bf16_packing_is_close_and_opt_in():
    """bf16 packed weights: not exact (stated), but close; fp32 stays the default; other dtypes refused."""
    lm = _lm(True, True, [{"name": "ntp"}])
    twin = copy.deepcopy(lm, memo={id(p): p for p in lm.parameters()})
    pack_linears(twin, dtype=torch.bfloat16)
    assert "bfloat16" in repr(twin.model.lm_head) and twin.model.lm_head.weight.dtype == torch.float32
    ids = torch.randint(0, 29, (2, 13), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = lm.model(ids), twin.model(ids)
    assert got.dtype == torch.float32
    err = float((got - want).abs().max() / want.abs().max())
    assert 1e-5 < err < 3e-2  # bf16 rounding: visibly not exact, still close
    with pytest.raises(ForesightError, match="fp32 or bf16"):
        pack_linears(lm, dtype=torch.float16)
