"""Sparse trunks in training (issue 16): the MoE balance loss in the gradients and the metrics, the memory-value
learning-rate group and its schedule, TOP + UltraMemV2 training with exact resume, checkpoints, export refusal."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics
from foresight.train.schedule import value_lr_multiplier
from foresight.train.trainer import Trainer, make_optimizer

SPEC = StarGraphSpec(2, 3, 11)
DATA = StarGraphData(generate(SPEC, 64, seed=1), SPEC)
BASE = dict(vocab_size=SPEC.vocab_size, hidden_size=24, n_layers=2, n_heads=2, intermediate_size=40)
MOE = ModelConfig(**BASE, ffn="moe", moe_experts=3, moe_top_k=2, moe_intermediate_size=14, moe_aux_weight=0.5)
MEM = ModelConfig(**BASE, ffn="ultramem", mem_keys=6, mem_kdim=8, mem_knn=3, mem_vdim=10, mem_pre_vdim=6,
                  mem_share_ratio=0.75)


def _trainer(tmp_path, model_cfg, objectives, **train) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(**{"steps": 6, "batch_size": 8, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1,
                         "device": "cpu", "log_every": 1, **train})
    lm = TrainableLM(model_cfg, objectives)
    return Trainer(lm, cfg, tmp_path, batch_fn=lambda s: DATA.batch(s, cfg.batch_size, 0), run_config={
        "model": asdict(model_cfg), "objectives": objectives})


def test_value_lr_multiplier_decays_linearly_to_one():
    kw = dict(start=4.0, total_steps=100)
    assert [value_lr_multiplier(s, decay=1.0, **kw) for s in (0, 25, 50, 100, 150)] == [4.0, 3.25, 2.5, 1.0, 1.0]
    assert [value_lr_multiplier(s, decay=0.5, **kw) for s in (0, 25, 50, 99)] == [4.0, 2.5, 1.0, 1.0]
    assert value_lr_multiplier(3, start=1.0, decay=1.0, total_steps=10) == 1.0


def test_memory_values_are_their_own_group_at_the_multiplied_rate(tmp_path):
    trainer = _trainer(tmp_path, MEM, [{"name": "ntp"}], memory_value_lr_mult=3.0, warmup_steps=0)
    table = {id(p) for p in trainer.lm.model.memory_table.parameters()}
    groups = trainer.opt.param_groups
    memory = [g for g in groups if g.get("memory_values")]
    assert len(memory) == 1 and {id(p) for p in memory[0]["params"]} == table
    assert all(id(p) not in table for g in groups if not g.get("memory_values") for p in g["params"])
    record = trainer.train_step(DATA.batch(0, 8, 0))
    assert memory[0]["lr"] == pytest.approx(3.0 * record["lr"]) == pytest.approx(record["memory_value_lr"])
    assert all(g["lr"] == record["lr"] for g in groups if not g.get("memory_values"))
    dense = make_optimizer(TrainableLM(ModelConfig(**BASE), [{"name": "ntp"}]), TrainConfig())
    assert not any(g.get("memory_values") for g in dense.param_groups)


@pytest.mark.parametrize("objectives", [[{"name": "ntp"}], [{"name": "ntp"}, {"name": "mtp", "n": 2}]])
def test_moe_balance_loss_enters_the_gradients(objectives):
    """forward_backward (per-head path) with aux_scale == autograd of objective losses + aux_scale · balance."""
    torch.manual_seed(1)
    lm = TrainableLM(MOE, objectives).double()
    batch = DATA.batch(0, 8, 0)
    counts = {k: float(c) for k, c in lm.counts(batch).items()}
    scales = {k: 1.0 / counts[k] for k in lm.objectives}
    lm.forward_backward(batch, scales, aux_scale=0.3)
    got = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    lm.zero_grad()
    outs, aux = lm(batch, with_aux=True)
    total = sum(o.loss_sum / counts[k] for k, o in outs.items()) + 0.3 * aux
    total.backward()
    router = [n for n in got if "router" in n]
    assert router
    for n, p in lm.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)
    lm.zero_grad()
    lm.forward_backward(batch, scales, aux_scale=0.0)  # the balance loss does move the router
    assert not torch.allclose(lm.model.layers[0].mlp.router.weight.grad, got[router[0]])


def test_moe_training_logs_the_balance_loss_in_the_loss(tmp_path):
    trainer = _trainer(tmp_path, MOE, [{"name": "ntp"}], per_head_backward=False)
    reference = trainer.train_step(DATA.batch(0, 8, 0))
    other = _trainer(tmp_path / "b", MOE, [{"name": "ntp"}], micro_batch_size=4)
    record = other.train_step(DATA.batch(0, 8, 0))
    for r in (reference, record):
        assert r["moe_balance"] >= 1.0 - 1e-6  # >= 1, equal when perfectly balanced
        assert r["loss"] == pytest.approx(r["ntp_loss"] + 0.5 * r["moe_balance"], rel=1e-6)


@pytest.mark.parametrize("model_cfg", [MEM, MOE], ids=["ultramem", "moe"])
def test_top_with_a_sparse_trunk_trains_resumes_exactly_and_reloads(tmp_path, model_cfg):
    objectives = [{"name": "ntp"}, {"name": "top", "window": 16}]
    full = _trainer(tmp_path / "full", model_cfg, objectives, ckpt_every=3)
    full.fit()
    want = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"}
    assert want[6] < want[1]
    cut = _trainer(tmp_path / "cut", model_cfg, objectives, ckpt_every=3)
    original = cut.batch_fn

    def dying(step):
        if step == 4:  # dies during step 5, after the checkpoint at step 3
            raise KeyboardInterrupt
        return original(step)

    cut.batch_fn = dying
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    resumed = _trainer(tmp_path / "cut", model_cfg, objectives, ckpt_every=3)
    resumed.fit(resume=True)
    got = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "train"}
    assert got == want  # optimiser state (the memory-value group too) and weights came back exactly
    lm, _ = TrainableLM.from_checkpoint(tmp_path / "full")
    ids = DATA.batch(0, 4, 0).input_ids
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), full.lm.eval().model(ids), rtol=0, atol=0)
    assert lm.model.cfg.ffn == model_cfg.ffn


@pytest.mark.parametrize("model_cfg", [MEM, MOE], ids=["ultramem", "moe"])
def test_export_refuses_sparse_trunks_in_one_line(tmp_path, model_cfg):
    from foresight.hf import export_lm

    with pytest.raises(ForesightError, match="cannot export") as e:
        export_lm(TrainableLM(model_cfg, [{"name": "ntp"}]), [{"name": "ntp"}], tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()


def test_a_config_without_ffn_is_dense():
    old = {k: v for k, v in asdict(ModelConfig(**BASE)).items() if k != "ffn" and not k.startswith(("moe", "mem"))}
    lm = TrainableLM(ModelConfig(**old), [{"name": "ntp"}])
    assert lm.model.cfg.ffn == "dense" and lm.model.memory_table is None
    assert not any("memory" in k or "router" in k for k in lm.state_dict())


@pytest.mark.parametrize("model_cfg", [MEM, MOE], ids=["ultramem", "moe"])
def test_activation_checkpointing_keeps_the_gradients(model_cfg):
    """Recomputed blocks (the balance loss hangs off a checkpointed region) give the same gradients."""
    torch.manual_seed(0)
    lm = TrainableLM(model_cfg, [{"name": "ntp"}, {"name": "top", "window": 16}]).double()
    batch = DATA.batch(0, 8, 0)
    scales = {k: 1.0 / float(c) for k, c in lm.counts(batch).items()}
    lm.forward_backward(batch, scales, aux_scale=0.3)
    plain = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    for block in lm.model.layers:
        block.checkpointing = True
    lm.forward_backward(batch, scales, aux_scale=0.3)
    for a, p in zip(plain, lm.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("per_head", [True, False], ids=["per_head", "one_graph"])
@pytest.mark.parametrize("compile_backend", [None, "aot_eager"], ids=["eager", "compiled"])
def test_moe_training_step_with_activation_checkpointing_equals_without(tmp_path, per_head, compile_backend):
    """Two micro-batches, TOP + NTP on an MoE trunk: checkpointed blocks (recomputed in the backward) and compiled
    ones give the step's logged numbers (loss, each objective's, the balance loss) and updated weights of the
    plain step, in both backward paths."""
    train = dict(per_head_backward=per_head, micro_batch_size=4, steps=2)
    objectives = [{"name": "ntp"}, {"name": "top", "window": 16}]
    plain = _trainer(tmp_path / "plain", MOE, objectives, **train)
    other = _trainer(tmp_path / "other", MOE, objectives, activation_checkpointing=True,
                     compile=compile_backend is not None, compile_backend=compile_backend or "inductor", **train)
    assert all(b.checkpointing and b.compile_backend == compile_backend for b in other.lm.model.layers)
    for step in range(2):
        want, got = plain.train_step(DATA.batch(step, 8, 0)), other.train_step(DATA.batch(step, 8, 0))
        assert want["moe_balance"] > 1.0
        for key in ("loss", "ntp_loss", "top_loss", "moe_balance", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    for (name, a), b in zip(plain.lm.named_parameters(), other.lm.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
