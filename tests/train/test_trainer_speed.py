"""Trainer speed features against the plain path: per-head backward, activation checkpointing, torch.compile.

Each feature runs the same optimiser step as the reference (one backward of the summed loss, eager, no
checkpointing) in fp64 on a model with O(1) activations; every parameter gradient (read just before the
optimiser would apply it) and every logged number must agree to rounding. The cases mix MTP n = 2, 4 and
DS-MTP (both presets, depth 1 and 3) with TOP, loss weights other than 1, weight schedules and two
micro-batches per step. Compilation is checked with the ``aot_eager`` backend (AOTAutograd's joint graph and
partition, no code generation) and once, marked slow, with inductor, which needs a C++ compiler on CPU.
"""

from __future__ import annotations

import shutil
import weakref

import pytest
import torch
from torch._dynamo.utils import counters

import foresight.model.layers as layers
from foresight.batch import Batch
from foresight.config import from_dict
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.train.checkpoint import load_checkpoint
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer, use_compile

from helpers import randomize_weights

pytestmark = pytest.mark.usefixtures("one_thread")

V, T, B = 37, 11, 6
MODEL = ModelConfig(vocab_size=V, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40)
TOP = {"name": "top", "window": 8, "weight": 0.6}

CASES = {
    "ntp": [{"name": "ntp", "weight": 0.8}],
    "mtp2_top_schedule": [{"name": "ntp"}, TOP,
                          {"name": "mtp", "n": 2, "weight": [[{"step": 0}, 0.5], [{"step": 5}, 2.0]]}],
    "mtp4": [{"name": "ntp", "weight": 0.8}, {"name": "mtp", "n": 4, "weight": 0.7}],
    "dsmtp_top_paper_d1": [{"name": "ntp"}, TOP, {"name": "dsmtp", "preset": "top_paper", "depth": 1, "weight": 0.4}],
    "dsmtp_top_paper_d3": [{"name": "ntp"}, TOP,
                           {"name": "dsmtp", "preset": "top_paper", "depth": 3,
                            "weight": [[{"frac": 0}, 1.0], [{"frac": 0.5}, 0.25]]}],
    "dsmtp_deepseek_v3_d1": [{"name": "ntp"}, TOP, {"name": "dsmtp", "preset": "deepseek_v3"}],  # lambda schedule
    "dsmtp_deepseek_v3_d3": [{"name": "ntp", "weight": 1.5}, {"name": "dsmtp", "preset": "deepseek_v3", "depth": 3}],
    "mtp3_and_dsmtp_d2": [{"name": "ntp"}, {"name": "mtp", "n": 3, "weight": 0.3},
                          {"name": "dsmtp", "preset": "top_paper", "depth": 2, "weight": 0.9}],  # shared trunk leaves
}


def make_batch(lookahead: int, seed: int = 3) -> Batch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T + lookahead), generator=g)
    tokens[1, -1] = -100  # an ignored label at the end of the stream
    mask = torch.rand(B, T, generator=g) < 0.7
    return Batch(tokens, T, mask)


def run_step(tmp_path, objectives, dtype=torch.float64, step=7, **train) -> tuple[dict, dict]:
    """One ``train_step`` at ``step`` (schedules past their first value); returns (record, gradients)."""
    torch.manual_seed(0)
    lm = TrainableLM(MODEL, objectives)
    randomize_weights(lm, 0)
    lm.to(dtype)
    cfg = TrainConfig(**{"steps": 10, "batch_size": B, "micro_batch_size": B // 2, "device": "cpu", "grad_clip": 0.0,
                         **train})
    trainer = Trainer(lm, cfg, tmp_path, batch_fn=None, run_config={})
    trainer.step = step
    grads = {}
    trainer.opt.step = lambda: grads.update({n: p.grad.clone() for n, p in lm.named_parameters()})
    record = trainer.train_step(make_batch(lm.lookahead))
    return record, grads


def assert_same(got: tuple[dict, dict], want: tuple[dict, dict], rtol=1e-11, atol=1e-13) -> None:
    (rec, grads), (rec_ref, grads_ref) = got, want
    assert sorted(rec) == sorted(rec_ref)
    for key, value in rec_ref.items():
        assert rec[key] == pytest.approx(value, rel=rtol, abs=atol), key
    assert sorted(grads) == sorted(grads_ref)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name], g, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------------------------ per-head backward
@pytest.mark.parametrize("case", sorted(CASES))
def test_per_head_backward_equals_one_backward(tmp_path, case):
    reference = run_step(tmp_path, CASES[case], per_head_backward=False)
    assert all(g.abs().sum() > 0 for g in reference[1].values())  # every parameter is reached
    assert_same(run_step(tmp_path, CASES[case], per_head_backward=True), reference)


def test_per_head_backward_in_fp32(tmp_path):
    objectives = CASES["mtp3_and_dsmtp_d2"]
    reference = run_step(tmp_path, objectives, dtype=torch.float32, per_head_backward=False)
    assert_same(run_step(tmp_path, objectives, dtype=torch.float32), reference, rtol=1e-5, atol=1e-6)


def test_forward_backward_returns_the_forward_numbers():
    torch.manual_seed(0)
    lm = TrainableLM(MODEL, CASES["mtp3_and_dsmtp_d2"]).double()
    randomize_weights(lm, 1)
    batch = make_batch(lm.lookahead)
    plain = lm(batch)
    split = lm.forward_backward(batch, {k: 1.0 for k in lm.objectives})
    for key, out in plain.items():
        assert not split[key].loss_sum.requires_grad
        assert split[key].loss_sum.item() == out.loss_sum.item()  # same ops, same order: bitwise equal
        assert int(split[key].count) == int(out.count)
        assert {k: v.item() for k, v in split[key].metrics.items()} == {k: v.item() for k, v in out.metrics.items()}


class SavedBytes:
    """Peak bytes of activations saved for backward (parameters excluded), via saved-tensor hooks."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        if t.untyped_storage().data_ptr() in self.params:
            return t
        held = _Held(t.detach())  # detached: holding ``t`` itself (and so its grad_fn) would make a cycle
        self.live += t.numel() * t.element_size()
        self.peak = max(self.peak, self.live)
        weakref.finalize(held, self._free, t.numel() * t.element_size())  # freed with the graph node
        return held

    def _free(self, n: int) -> None:
        self.live -= n

    @staticmethod
    def unpack(h):
        return h.t if isinstance(h, _Held) else h

    def measure(self, fn) -> int:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            fn()
        return self.peak


class _Held:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


@pytest.mark.parametrize("case", ["mtp4", "dsmtp_top_paper_d3"])
def test_per_head_backward_holds_one_head_at_a_time(case):
    torch.manual_seed(0)
    lm = TrainableLM(MODEL, CASES[case])
    batch = make_batch(lm.lookahead)
    scales = {k: 1.0 for k in lm.objectives}

    def plain():
        sum(o.loss_sum for o in lm(batch).values()).backward()

    whole = SavedBytes(lm).measure(plain)
    split = SavedBytes(lm).measure(lambda: lm.forward_backward(batch, scales))
    with torch.no_grad():
        out = lm.model.trunk(batch.input_ids)
    x = out.last_input.clone().requires_grad_()
    head = lm.objectives[CASES[case][-1]["name"]]
    if case.startswith("mtp"):
        one = SavedBytes(lm).measure(lambda: head.heads[0](x, out.cos, out.sin).sum().backward())
    else:
        emb = lm.model.embed_tokens(batch.input_ids).detach()
        one = SavedBytes(lm).measure(lambda: head.layers[0](x, emb, out.cos, out.sin).sum().backward())
    # Three heads (modules) in the reference graph at once, one at a time when split.
    assert whole - split >= 1.5 * one, (whole, split, one)


# ----------------------------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("case", ["ntp", "mtp4", "dsmtp_top_paper_d3", "mtp3_and_dsmtp_d2"])
def test_activation_checkpointing_keeps_losses_and_gradients(tmp_path, monkeypatch, case, per_head):
    reference = run_step(tmp_path, CASES[case], per_head_backward=False)
    calls = []
    spy = lambda *a, **k: calls.append(k) or torch.utils.checkpoint.checkpoint(*a, **k)  # noqa: E731
    monkeypatch.setattr(layers, "checkpoint", spy)
    got = run_step(tmp_path, CASES[case], per_head_backward=per_head, activation_checkpointing=True)
    assert calls == [{"use_reentrant": False}] * (MODEL.n_layers * 2)  # trunk blocks only, two micro-batches
    assert_same(got, reference)


def test_checkpointing_and_compile_leave_inference_eager(tmp_path, monkeypatch):
    """No grad or a KV cache (evaluation, generation): the plain block, never checkpointed nor compiled."""
    torch.manual_seed(0)
    lm = TrainableLM(MODEL, CASES["mtp4"])
    cfg = TrainConfig(steps=1, batch_size=2, device="cpu", compile=True, compile_backend="aot_eager",
                      activation_checkpointing=True)
    trainer = Trainer(lm, cfg, tmp_path, batch_fn=None, run_config={})
    monkeypatch.setattr(layers, "training_forward", None)  # any use of the training path would fail
    ids = make_batch(1).input_ids
    with torch.no_grad():
        full = trainer.lm.model(ids)  # (B, T, V)
    caches = trainer.lm.model.new_caches()
    steps = [trainer.lm.model(ids[:, :5], caches)] + [trainer.lm.model(ids[:, t : t + 1], caches) for t in range(5, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ compile
def test_compile_setting(tmp_path, monkeypatch):
    for bad in ("yes", 1, None):
        with pytest.raises(ForesightError, match="train.compile must be auto, true or false"):
            TrainConfig(compile=bad)
    with pytest.raises(ForesightError, match="train.compile_backend"):
        TrainConfig(compile_backend="")
    with pytest.raises(ForesightError, match="train.compile_backend='nope' is not a torch.compile backend"):
        Trainer(TrainableLM(MODEL, [{"name": "ntp"}]), TrainConfig(device="cpu", compile=True, compile_backend="nope"),
                tmp_path, batch_fn=None, run_config={})
    for value in ("auto", True, False):  # what a recipe or --set train.compile=... gives
        assert from_dict(TrainConfig, {"compile": value}, "train").compile == value
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_compile("auto", "inductor", cpu) and use_compile("auto", "aot_eager", cuda)
    assert use_compile(True, "inductor", cpu) and not use_compile(False, "inductor", cuda)
    # On the CPU, auto compiles only runs long enough to repay the compilation (issue 13), given a C++ compiler.
    assert not use_compile("auto", "inductor", cpu, steps=1999) and not use_compile("auto", "inductor", cpu)
    assert use_compile("auto", "aot_eager", cpu, steps=2000)
    monkeypatch.setattr("foresight.train.trainer.shutil.which", lambda name: None)
    assert not use_compile("auto", "inductor", cpu, steps=5000)
    monkeypatch.setattr("foresight.train.trainer.shutil.which", lambda name: "/usr/bin/" + name)
    assert use_compile("auto", "inductor", cpu, steps=5000)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_blocks_give_the_same_step(tmp_path, checkpointing):
    case = CASES["mtp3_and_dsmtp_d2"]
    reference = run_step(tmp_path, case, per_head_backward=False)
    torch._dynamo.reset()
    counters.clear()
    for per_head in (False, True):
        got = run_step(tmp_path, case, per_head_backward=per_head, activation_checkpointing=checkpointing,
                       compile=True, compile_backend="aot_eager")
        assert_same(got, reference, rtol=1e-10, atol=1e-12)
    # Trunk blocks, MTP heads and DS-MTP blocks share one graph (two with checkpointed trunk blocks): no
    # recompilation per layer.
    assert counters["stats"]["unique_graphs"] == 1 + checkpointing


def test_checkpoint_of_a_compiled_run_loads_into_an_eager_model(tmp_path):
    objectives = CASES["mtp3_and_dsmtp_d2"]
    torch.manual_seed(0)
    lm = TrainableLM(MODEL, objectives)
    cfg = TrainConfig(steps=1, batch_size=2, device="cpu", compile=True, compile_backend="aot_eager",
                      activation_checkpointing=True, tensorboard=False)
    batch = make_batch(lm.lookahead)
    evals = []
    trainer = Trainer(lm, cfg, tmp_path, batch_fn=lambda step: batch.rows(0, 2), run_config={},
                      eval_fn=lambda model: evals.append(model) or {"ok": 1.0})
    assert trainer.compiled
    trainer.fit()
    assert evals == [trainer.lm.model]
    state = load_checkpoint(tmp_path)["lm"]
    fresh = TrainableLM(MODEL, objectives)
    assert list(state) == list(fresh.state_dict())  # the same keys, no ``_orig_mod.``
    fresh.load_state_dict(state)  # strict
    with torch.no_grad():
        for key, out in trainer.lm(batch).items():
            assert fresh(batch)[key].loss_sum.item() == out.loss_sum.item()


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on CPU needs a C++ compiler")
def test_inductor_compiled_step_matches_eager(tmp_path):
    """The default backend (C++ code generation on CPU), all three features at once, fp32."""
    case = CASES["mtp3_and_dsmtp_d2"]
    reference = run_step(tmp_path, case, dtype=torch.float32, per_head_backward=False)
    got = run_step(tmp_path, case, dtype=torch.float32, activation_checkpointing=True, compile=True)
    assert_same(got, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_default_training_path_matches_reference(tmp_path):
    """On CUDA the defaults compile the blocks (inductor) and split the heads, under bf16 autocast; with
    checkpointing on top, each gradient stays within bf16 rounding of the eager one-backward step."""
    case = CASES["mtp3_and_dsmtp_d2"]
    reference = run_step(tmp_path, case, dtype=torch.float32, device="cuda", compile=False, per_head_backward=False)
    rec, grads = run_step(tmp_path, case, dtype=torch.float32, device="cuda", activation_checkpointing=True)
    for key in ("ntp_loss", "mtp_loss", "dsmtp_loss"):
        assert rec[key] == pytest.approx(reference[0][key], rel=1e-2), key
    for name, g in reference[1].items():
        error = float((grads[name] - g).norm() / g.norm().clamp(min=1e-12))
        assert error < 5e-2, f"{name}: relative error {error:.3g}"
