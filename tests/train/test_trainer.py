"""Trainer: accumulation equals one big batch, exact resume after an interruption, checkpoints, schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.objectives.weights import check_weight, weight_at
from foresight.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics
from foresight.train.schedule import lr_at
from foresight.train.trainer import Trainer

SPEC = StarGraphSpec(2, 3, 11)
DATA = StarGraphData(generate(SPEC, 96, seed=1), SPEC)
MODEL = ModelConfig(vocab_size=SPEC.vocab_size, hidden_size=24, n_layers=2, n_heads=2, intermediate_size=40)
OBJECTIVES = [{"name": "ntp"}, {"name": "top", "window": 64}, {"name": "mtp", "n": 2}]


def _trainer(tmp_path, objectives=OBJECTIVES, **train) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(**{"steps": 10, "batch_size": 16, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2,
                         "device": "cpu", "log_every": 1, **train})
    lm = TrainableLM(MODEL, objectives)
    return Trainer(lm, cfg, tmp_path, batch_fn=lambda s: DATA.batch(s, cfg.batch_size, 0), run_config={"test": 1})


def _train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_accumulation_matches_one_big_batch(tmp_path):
    whole = _trainer(tmp_path / "a", micro_batch_size=16)
    split = _trainer(tmp_path / "b", micro_batch_size=4)
    batch = DATA.batch(0, 16, 0)
    r1, r2 = whole.train_step(batch), split.train_step(batch)
    assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-6)
    assert r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-5)
    for p, q in zip(whole.lm.parameters(), split.lm.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_interrupted_run_resumes_with_identical_losses(tmp_path):
    full = _trainer(tmp_path / "full", ckpt_every=4)
    full.fit()
    expected = _train_losses(tmp_path / "full")
    assert sorted(expected) == list(range(1, 11))

    class Killed(Exception):
        pass

    broken = _trainer(tmp_path / "cut", ckpt_every=4)
    original = broken.batch_fn

    def dying(step):
        if step == 6:  # dies during step 7, after the checkpoint at step 4
            raise Killed
        return original(step)

    broken.batch_fn = dying
    with pytest.raises(Killed):
        broken.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [4]

    resumed = _trainer(tmp_path / "cut", ckpt_every=4)
    resumed.fit(resume=True)
    got = _train_losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, 11))  # lines after the checkpoint were replaced, not duplicated
    for step in range(1, 11):
        assert got[step] == expected[step], f"step {step}: {got[step]} != {expected[step]}"


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(folder, step, {"lm": {}, "config": {}, "step": step}, keep_last=2)
    assert [s for s, _ in list_checkpoints(folder)] == [2, 3]
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000002.safetensors",
                                                        "step_00000003.safetensors"]  # no temp files
    assert load_checkpoint(tmp_path)["step"] == 3  # a run folder resolves to its newest checkpoint
    (folder / "step_00000004.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ForesightError, match="not a readable foresight checkpoint"):
        load_checkpoint(folder / "step_00000004.safetensors")
    assert load_checkpoint(tmp_path)["step"] == 3  # a run folder skips a broken newest checkpoint
    with pytest.raises(ForesightError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForesightError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_checkpoint_keeps_objective_heads(tmp_path):
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit()
    state = load_checkpoint(tmp_path)
    assert any(k.startswith("objectives.top.head") for k in state["lm"])
    assert any(k.startswith("objectives.mtp.heads.0") for k in state["lm"])
    assert state["config"] == {"test": 1}


def test_metrics_lines_have_per_objective_losses(tmp_path):
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit()
    rec = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"][-1]
    for key in ("loss", "ntp_loss", "top_loss", "mtp_loss", "mtp_head1", "lr", "grad_norm", "tokens_per_s"):
        assert key in rec and math.isfinite(rec[key]), key
    assert rec["loss"] == pytest.approx(rec["ntp_loss"] + rec["top_loss"] + rec["mtp_loss"], rel=1e-6)
    assert rec["mtp_loss"] == pytest.approx(rec["mtp_head1"], rel=1e-5)


def test_non_finite_step_is_skipped(tmp_path):
    trainer = _trainer(tmp_path, objectives=[{"name": "ntp"}])
    with torch.no_grad():
        trainer.lm.model.norm.weight.fill_(float("nan"))
    before = [p.detach().clone() for p in trainer.lm.parameters()]
    record = trainer.train_step(DATA.batch(0, 16, 0))
    assert record["skipped"] is True
    for p, q in zip(before, trainer.lm.parameters()):
        torch.testing.assert_close(p, q, equal_nan=True)


def test_early_stop(tmp_path):
    trainer = _trainer(tmp_path, steps=50, eval_every=1, early_stop_metric="score", early_stop_patience=2)
    trainer.eval_fn = lambda model: {"score": 1.0}
    trainer.fit()
    assert trainer.stopped_early and trainer.step == 2
    assert list_checkpoints(tmp_path / "checkpoints")[-1][0] == 2


def test_lr_schedule():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, **kw) == pytest.approx(1.0)
    assert lr_at(13, **kw) == pytest.approx(0.1)
    mid = lr_at(4 + 9 // 2, **kw)
    assert 0.1 < mid < 1.0
    values = [lr_at(s, **kw) for s in range(4, 14)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_weight_schedule():
    assert weight_at(0.5, 10, 100) == 0.5
    schedule = [[{"frac": 0}, 0.3], [{"frac": 0.5}, 0.1]]  # fraction of the run
    assert weight_at(schedule, 49, 100) == 0.3 and weight_at(schedule, 50, 100) == 0.1
    steps = [[{"step": 0}, 1.0], [{"step": 7}, 2.0]]  # step numbers
    assert weight_at(steps, 6, 100) == 1.0 and weight_at(steps, 7, 100) == 2.0
    check_weight(schedule, "w")
    check_weight(steps, "w")
    for bad in ([[{"step": 1}, 0.3]], [], "x", [[{"step": 0}]], [[{"frac": 0}, 1.0], [{"step": 5}, 2.0]],
                [[{"step": 0}, 1.0], [{"step": 2.5}, 2.0]], [[{"frac": 0}, 1.0], [{"frac": 1.5}, 2.0]],
                [[{"step": 0}, 1.0], [{"step": 9}, 2.0], [{"step": 9}, 3.0]], [[{"epoch": 0}, 1.0]],
                [[{"step": 0, "frac": 0}, 1.0]], True):
        with pytest.raises(ForesightError):
            check_weight(bad, "w")


@pytest.mark.parametrize("old, new", [
    ([[0, 0.3], [0.5, 0.1]], "[[{frac: 0}, 0.3], [{frac: 0.5}, 0.1]]"),  # a float time was a fraction
    ([[0, 1.0], [7, 2.0]], "[[{step: 0}, 1.0], [{step: 7}, 2.0]]"),  # an int time a step
])
def test_the_old_bare_number_schedule_is_one_line_saying_how_to_write_it(old, new):
    with pytest.raises(ForesightError) as e:
        check_weight(old, "runs.top.top.weight")
    message = str(e.value)
    assert "\n" not in message and message.startswith("runs.top.top.weight: a schedule time must say its unit")
    assert f"write {new} " in message
    with pytest.raises(ForesightError, match="a schedule time must say its unit"):
        weight_at(old, 0, 100)  # a schedule built in code, never checked by a recipe, says the same
    check_weight(yaml.safe_load(new), "w")  # what it suggests is valid, and means what the old form meant
    assert [weight_at(yaml.safe_load(new), s, 100) for s in (0, 6, 7, 49, 50)] == \
        [weight_at_old(old, s, 100) for s in (0, 6, 7, 49, 50)]


def weight_at_old(weight, step: int, total_steps: int) -> float:
    """The old reading of a bare-number schedule, written out plainly: an int time is a step, a float a fraction."""
    value = weight[0][1]
    for at, v in weight:
        if step >= (at if isinstance(at, int) else at * total_steps):
            value = v
    return value


@pytest.mark.parametrize("bad", [
    {"steps": 0}, {"batch_size": 8, "micro_batch_size": 3}, {"lr": -1.0}, {"min_lr": 1.0, "lr": 0.1},
    {"betas": [0.9]}, {"keep_last": 0},
])
def test_train_config_rejects_impossible_values(bad):
    with pytest.raises(ForesightError):
        TrainConfig(**bad)


def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ForesightError, match="no CUDA device"):
        _trainer(tmp_path, device="cuda")


def test_metrics_file_is_json_lines(tmp_path):
    _trainer(tmp_path, steps=1).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "meta"
