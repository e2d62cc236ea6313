"""``Trainer(should_stop=...)``: a run stopped between steps (SIGTERM, a time limit) ends like a finished one, with
a final evaluation and checkpoint, marked partial, and resumes to the same losses as an uninterrupted run."""

from __future__ import annotations

import torch

from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.model import ModelConfig
from foresight.train.checkpoint import list_checkpoints
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics
from foresight.train.trainer import Trainer

SPEC = StarGraphSpec(2, 3, 11)
DATA = StarGraphData(generate(SPEC, 64, seed=1), SPEC)
MODEL = ModelConfig(vocab_size=SPEC.vocab_size, hidden_size=24, n_layers=2, n_heads=2, intermediate_size=40)


def _trainer(run_dir, should_stop=None, stop_after=None) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(steps=9, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=2, device="cpu", log_every=1,
                      eval_every=4, tensorboard=False, stop_after=stop_after)
    lm = TrainableLM(MODEL, [{"name": "ntp"}, {"name": "top", "window": 64}])
    return Trainer(lm, cfg, run_dir, batch_fn=lambda s: DATA.batch(s, 16, 0), run_config={"test": 1},
                   eval_fn=lambda model: {"score": float(len(list(model.parameters())))}, should_stop=should_stop)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_stop_keeps_a_checkpoint_and_a_final_evaluation_then_resumes_exactly(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    assert not full.partial

    holder = {}
    cut = _trainer(tmp_path / "cut", should_stop=lambda: holder["t"].step >= 6)
    holder["t"] = cut
    evals = cut.fit()
    assert cut.partial and cut.step == 6
    assert [e["step"] for e in evals] == [4, 6]  # the scheduled one, then the final one at the stop
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [6]

    resumed = _trainer(tmp_path / "cut")
    resumed.fit(resume=True)
    assert not resumed.partial and resumed.step == 9
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")


def test_stop_at_a_scheduled_evaluation_does_not_evaluate_twice(tmp_path):
    holder = {}
    cut = _trainer(tmp_path, should_stop=lambda: holder["t"].step >= 4)
    holder["t"] = cut
    assert [e["step"] for e in cut.fit()] == [4]
    assert cut.partial


def test_stop_after_ends_the_run_early_on_the_full_schedule(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    cut = _trainer(tmp_path / "cut", stop_after=5)
    evals = cut.fit()
    assert cut.partial and cut.step == 5
    assert [e["step"] for e in evals] == [4, 5]
    # the first 5 steps are those of the 9-step schedule (same lr), not of a 5-step one
    assert _losses(tmp_path / "cut") == {s: v for s, v in _losses(tmp_path / "full").items() if s <= 5}
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"}
    cut_lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "train"}
    assert cut_lrs == {s: v for s, v in lrs.items() if s <= 5}


def test_stop_after_out_of_range_is_one_line():
    import pytest

    from foresight.errors import ForesightError

    with pytest.raises(ForesightError, match="train.stop_after must be null or an integer in 1 .. train.steps"):
        TrainConfig(steps=9, stop_after=10)
    with pytest.raises(ForesightError, match="train.stop_after must be null or an integer"):
        TrainConfig(steps=9, stop_after=True)


def test_stop_after_below_a_resumed_step_stops_at_once(tmp_path):
    cut = _trainer(tmp_path, stop_after=6)
    cut.fit()
    resumed = _trainer(tmp_path, stop_after=4)  # resumed at step 6, past the new stop
    resumed.fit(resume=True)
    assert resumed.partial and resumed.step == 6
