"""Head-only training (``train.freeze: trunk``): the trunk stays bit-identical, only heads get gradients and
optimiser state, the heads' gradients equal those of full training, and the trunk builds no graph."""

from __future__ import annotations

import pytest
import torch

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.train.checkpoint import load_checkpoint
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer

from helpers import randomize_weights

pytestmark = pytest.mark.usefixtures("one_thread")

V, T, B = 37, 11, 6
MODEL = ModelConfig(vocab_size=V, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40)
CASES = {
    "mtp3": [{"name": "ntp"}, {"name": "mtp", "n": 3, "weight": 0.7}],
    "dsmtp2": [{"name": "ntp"}, {"name": "dsmtp", "preset": "top_paper", "depth": 2}],
    "top": [{"name": "ntp"}, {"name": "top", "window": 8, "weight": 0.5}],
}


def _batch(step: int) -> Batch:
    g = torch.Generator().manual_seed(100 + step)
    return Batch(torch.randint(0, V, (B, T + 4), generator=g), T)


def _lm(objectives, seed=0) -> TrainableLM:
    torch.manual_seed(seed)
    lm = TrainableLM(MODEL, objectives)
    randomize_weights(lm, seed)  # O(1) activations: gradients far from zero
    return lm


def _trainer(tmp_path, objectives, **train) -> Trainer:
    cfg = TrainConfig(**{"steps": 3, "batch_size": B, "micro_batch_size": 3, "lr": 1e-2, "warmup_steps": 0,
                         "device": "cpu", "log_every": 1, "tensorboard": False, **train})
    return Trainer(_lm(objectives), cfg, tmp_path, batch_fn=_batch, run_config={"test": 1})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("per_head", [True, False])
def test_frozen_trunk_is_bit_identical_and_heads_train(tmp_path, case, per_head):
    tr = _trainer(tmp_path, CASES[case], freeze="trunk", per_head_backward=per_head)
    trunk0 = {k: v.clone() for k, v in tr.lm.model.state_dict().items()}
    heads0 = {k: v.clone() for k, v in tr.lm.objectives.state_dict().items()}
    for step in range(3):
        tr.train_step(_batch(step))
        tr.step += 1
    for k, v in tr.lm.model.state_dict().items():
        assert torch.equal(v, trunk0[k]), k
    changed = [k for k, v in tr.lm.objectives.state_dict().items() if not torch.equal(v, heads0[k])]
    assert len(changed) == len(heads0)  # every head tensor moved
    # Optimiser: exactly the objectives' parameters, each with state; no trunk parameter anywhere.
    held = [p for g in tr.opt.param_groups for p in g["params"]]
    assert {id(p) for p in held} == {id(p) for p in tr.lm.objectives.parameters()}
    assert len(tr.opt.state) == len(held)
    assert all(p.grad is None for p in tr.lm.model.parameters())


@pytest.mark.parametrize("case", CASES)
def test_head_gradients_equal_full_training(case):
    """Freezing changes which parameters train, not the heads' gradients (same weights, same batch)."""
    batch = _batch(0)
    grads = []
    for freeze in (False, True):
        lm = _lm(CASES[case]).double()
        if freeze:
            lm.freeze_trunk()
        lm.forward_backward(batch, {k: 0.1 for k in lm.objectives})
        grads.append({n: p.grad.clone() for n, p in lm.objectives.named_parameters()})
        if freeze:
            assert all(p.grad is None for p in lm.model.parameters())
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-12, atol=1e-12)


def test_frozen_trunk_builds_no_graph():
    lm = _lm(CASES["mtp3"])
    lm.freeze_trunk()
    out = lm.model.trunk(_batch(0).input_ids)
    assert not any(t.requires_grad for t in (out.hidden, out.final, out.last_input))


def test_checkpoint_resume_with_frozen_trunk(tmp_path):
    tr = _trainer(tmp_path, CASES["top"], freeze="trunk", ckpt_every=2, steps=4)
    tr.fit()
    again = _trainer(tmp_path / "b", CASES["top"], freeze="trunk", steps=4)
    again.run_dir = tmp_path
    assert again.resume() and again.step == 4
    state = load_checkpoint(tmp_path / "checkpoints")
    assert len(state["optimizer"]["state"]) == len(list(tr.lm.objectives.parameters()))


def test_freeze_errors():
    with pytest.raises(ForesightError, match="train.freeze must be none or trunk"):
        TrainConfig(freeze="heads")
    lm = _lm([{"name": "ntp"}])
    with pytest.raises(ForesightError, match="leaves nothing to train"):
        lm.freeze_trunk()


# ---- train.unfreeze_blocks: the last N blocks and the final norm train with the heads (continued training)
DEEP = ModelConfig(vocab_size=V, hidden_size=24, n_layers=3, n_heads=4, n_kv_heads=2, intermediate_size=40)


def _deep_lm(objectives, seed=0) -> TrainableLM:
    torch.manual_seed(seed)
    lm = TrainableLM(DEEP, objectives)
    randomize_weights(lm, seed)
    return lm


def _unfrozen_names(lm: TrainableLM, n: int) -> set[str]:
    """What must train: the last n blocks, the final norm, every objective's own parameter."""
    blocks = tuple(f"model.layers.{i}." for i in range(DEEP.n_layers - n, DEEP.n_layers))
    return {name for name, _ in lm.named_parameters()
            if name.startswith(blocks) or name.startswith(("model.norm.", "objectives."))}


@pytest.mark.parametrize("case", ["ntp", *CASES])
@pytest.mark.parametrize("n", [1, 2])
def test_unfrozen_blocks_get_full_training_gradients(case, n):
    """Freezing the lower blocks changes nothing above them: the last n blocks', the norm's and the heads'
    gradients equal full training's (fp64), and every frozen parameter gets none."""
    objectives = CASES.get(case, [{"name": "ntp"}])
    batch = _batch(0)
    full = _deep_lm(objectives).double()
    full.forward_backward(batch, {k: 0.1 for k in full.objectives})
    part = _deep_lm(objectives).double()
    left = part.freeze_trunk(unfreeze_blocks=n)
    seen = []  # whether the first frozen block's output carries a graph
    part.model.layers[0].register_forward_hook(lambda m, i, o: seen.append(o[0].requires_grad))  # (x, aux)
    part.forward_backward(batch, {k: 0.1 for k in part.objectives})
    want = _unfrozen_names(part, n)
    assert left == sum(p.numel() for name, p in part.named_parameters() if name in want)
    assert seen == [False]  # the frozen blocks below built no graph
    full_grads = dict(full.named_parameters())
    for name, p in part.named_parameters():
        if name in want:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, full_grads[name].grad, rtol=1e-12, atol=1e-12)
        else:
            assert p.grad is None, name


def test_unfrozen_blocks_train_and_the_rest_stays(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=B, micro_batch_size=3, lr=1e-2, warmup_steps=0, device="cpu",
                      tensorboard=False, freeze="trunk", unfreeze_blocks=1)
    tr = Trainer(_deep_lm(CASES["top"]), cfg, tmp_path, batch_fn=_batch, run_config={"test": 1})
    before = {k: v.clone() for k, v in tr.lm.named_parameters()}
    for step in range(2):
        tr.train_step(_batch(step))
        tr.step += 1
    want = _unfrozen_names(tr.lm, 1)
    for name, p in tr.lm.named_parameters():
        assert torch.equal(p, before[name]) != (name in want), name
    held = {id(p) for g in tr.opt.param_groups for p in g["params"]}
    assert held == {id(p) for name, p in tr.lm.named_parameters() if name in want}


def test_unfreeze_blocks_errors():
    with pytest.raises(ForesightError, match="only applies with train.freeze: trunk"):
        TrainConfig(unfreeze_blocks=1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ForesightError, match="unfreeze_blocks must be an integer >= 0"):
            TrainConfig(freeze="trunk", unfreeze_blocks=bad)
    with pytest.raises(ForesightError, match="the model has only 3 blocks"):
        _deep_lm([{"name": "ntp"}]).freeze_trunk(unfreeze_blocks=4)
