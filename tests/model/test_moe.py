"""MoE feed-forward: equals the per-token loop reference (values and gradients), dropless, balance loss."""

from __future__ import annotations

import pytest
import torch

from foresight.errors import ForesightError
from foresight.model import ModelConfig, Transformer
from foresight.model.moe import MoE, balance_loss, moe_reference


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=19, hidden_size=14, n_layers=2, n_heads=7, intermediate_size=22, ffn="moe",
                moe_experts=5, moe_top_k=2, moe_intermediate_size=9)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("top_k", [1, 2, 5])
def test_moe_equals_the_per_token_reference_with_gradients(top_k):
    torch.manual_seed(0)
    moe = MoE(_cfg(moe_top_k=top_k)).double()
    for p in moe.parameters():  # O(1) weights, so differences are not hidden by small outputs
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(3, 7, 14, dtype=torch.double, requires_grad=True)
    got, _ = moe(x)
    want = moe_reference(moe, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    grads = torch.autograd.grad((got * g).sum(), [x, *moe.parameters()])
    refs = torch.autograd.grad((want * g).sum(), [x, *moe.parameters()])
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dropless_when_every_token_picks_the_same_experts():
    """No capacity: all 21 tokens going to experts 3 and 1 are all computed (a capacity-limited layer would drop)."""
    torch.manual_seed(1)
    moe = MoE(_cfg()).double()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[3] = 0.0
    x = torch.randn(21, 14, dtype=torch.double).abs()
    with torch.no_grad():
        moe.router.weight[3] = 5.0  # expert 3 first, expert 1 second for positive inputs
        moe.router.weight[1] = 2.0
    probs, _, experts = moe.route(x)
    assert (experts[:, 0] == 3).all() and (experts[:, 1] == 1).all()
    torch.testing.assert_close(moe(x)[0], moe_reference(moe, x), rtol=1e-12, atol=1e-12)


def test_balance_loss_is_the_switch_formula():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1]], dtype=torch.double)
    experts = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1]])
    share = [3 / 8, 3 / 8, 2 / 8]  # assignments per expert / (4 tokens x 2)
    mean = probs.mean(0).tolist()
    want = 3 * sum(f * p for f, p in zip(share, mean))
    assert float(balance_loss(probs, experts)) == pytest.approx(want, rel=1e-14)
    uniform = torch.full((6, 3), 1 / 3, dtype=torch.double)
    assert float(balance_loss(uniform, torch.tensor([[0], [1], [2], [0], [1], [2]]))) == pytest.approx(1.0)


def _layer_losses(model: Transformer, ids: torch.Tensor) -> list[torch.Tensor]:
    """Each block's balance loss, the blocks run one by one as the trunk runs them."""
    cos, sin = model.rotary(ids.shape[1], ids.device, 0)
    x, losses = model.embed_tokens(ids), []
    for layer in model.layers:
        x, aux = layer(x, cos, sin, with_aux=True)
        losses.append(aux)
    return losses


def test_trunk_reports_the_mean_balance_loss_only_with_grad():
    torch.manual_seed(2)
    model = Transformer(_cfg(n_layers=3))
    ids = torch.randint(0, 19, (2, 5))
    out = model.trunk(ids)
    layers = [float(aux.detach()) for aux in _layer_losses(model, ids)]
    assert float(out.aux_loss.detach()) == pytest.approx(sum(layers) / 3, rel=1e-6)
    with torch.no_grad():
        assert model.trunk(ids).aux_loss is None
    assert not any(hasattr(layer.mlp, "balance_loss") for layer in model.layers)  # nothing kept on the modules
    dense = Transformer(_cfg(ffn="dense"))
    assert dense.trunk(ids).aux_loss is None


def test_each_forward_carries_its_own_balance_loss():
    """Two forwards before either loss is read (the failure mode of a loss kept on the module): each output
    holds its own forward's loss, and its gradient is that forward's alone."""
    torch.manual_seed(3)
    model = Transformer(_cfg(n_layers=2)).double()
    first, second = torch.randint(0, 19, (2, 6)), torch.randint(0, 19, (3, 4))
    out1, out2 = model.trunk(first), model.trunk(second)
    want1 = torch.stack(_layer_losses(model, first)).mean()
    want2 = torch.stack(_layer_losses(model, second)).mean()
    assert float(want1.detach()) != pytest.approx(float(want2.detach()))
    torch.testing.assert_close(out1.aux_loss, want1, rtol=0, atol=0)
    torch.testing.assert_close(out2.aux_loss, want2, rtol=0, atol=0)
    routers = [layer.mlp.router.weight for layer in model.layers]
    got = torch.autograd.grad(out1.aux_loss, routers)
    ref = torch.autograd.grad(want1, routers)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_heads_stay_dense_and_old_configs_mean_dense():
    from foresight.model.layers import SwiGLU
    from foresight.train.lm import TrainableLM

    lm = TrainableLM(_cfg(), [{"name": "ntp"}, {"name": "mtp", "n": 3}, {"name": "dsmtp", "depth": 1}])
    assert all(isinstance(layer.mlp, MoE) for layer in lm.model.layers)
    heads = [m for key in ("mtp", "dsmtp") for m in lm.objectives[key].modules() if hasattr(m, "mlp")]
    assert len(heads) == 3 and all(isinstance(b.mlp, SwiGLU) and b.memory is None for b in heads)
    assert ModelConfig(vocab_size=19, hidden_size=14, n_heads=7).ffn == "dense"


@pytest.mark.parametrize("kw, needle", [
    ({"moe_top_k": 6}, "moe_top_k"), ({"moe_top_k": 0}, "moe_top_k"), ({"moe_aux_weight": -1.0}, "moe_aux_weight"),
    ({"ffn": "sparse"}, "model.ffn"),
])
def test_bad_moe_settings_are_one_line(kw, needle):
    with pytest.raises(ForesightError, match=needle) as e:
        _cfg(**kw)
    assert "\n" not in str(e.value)
