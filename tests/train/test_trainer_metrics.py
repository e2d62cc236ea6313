"""Trainer additions: FLOPs per token and MFU, TensorBoard when installed, tokens seen, data-position checks."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.train.config import TrainConfig
from foresight.train.flops import flops_per_token, peak_flops
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics
from foresight.train.trainer import Trainer, make_optimizer

V, D, L, F, T = 96, 16, 3, 40, 12
CFG = ModelConfig(vocab_size=V, hidden_size=D, n_layers=L, n_heads=2, intermediate_size=F)
BLOCK = 4 * D * D + 3 * D * F + 2 * D  # attention, SwiGLU, two norms


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second intra-op thread only adds waiting
    yield
    torch.set_num_threads(before)


def _batch(step: int, b: int = 4, extra: int = 8) -> Batch:
    g = torch.Generator().manual_seed(step)
    return Batch(torch.randint(0, V, (b, T + extra), generator=g), T)


def test_flops_per_token_follows_the_anchors_definition():
    ntp = TrainableLM(CFG, [{"name": "ntp"}])
    # 6 · (non-embedding params + heads) + 6 · L · T · D; the final norm counts as a (tiny) parameter.
    assert flops_per_token(ntp, T) == 6 * (L * BLOCK + D + V * D) + 6 * L * T * D
    top = TrainableLM(CFG, [{"name": "ntp"}, {"name": "top", "window": 8}])
    assert flops_per_token(top, T) - flops_per_token(ntp, T) == 6 * V * D  # one more head
    mtp = TrainableLM(CFG, [{"name": "ntp"}, {"name": "mtp", "n": 3}])
    # two head blocks (with their attention) and two more uses of the shared output head
    assert flops_per_token(mtp, T) - flops_per_token(ntp, T) == 6 * (2 * BLOCK + 2 * V * D) + 6 * 2 * T * D
    ds = TrainableLM(CFG, [{"name": "ntp"}, {"name": "dsmtp", "depth": 1}])
    module = BLOCK + 2 * D * D + D + 2 * D  # block, projection with bias (top_paper preset), two norms
    assert flops_per_token(ds, T) - flops_per_token(ntp, T) == 6 * (module + V * D) + 6 * T * D


def test_peak_flops_by_name_or_setting(monkeypatch):
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), 100.0) == 100e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peak_flops(torch.device("cuda")) == 790e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU")
    assert peak_flops(torch.device("cuda")) is None


def _trainer(tmp_path, **train) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(**{"steps": 4, "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "min_lr": 1e-3,
                         "device": "cpu", "log_every": 2, **train})
    lm = TrainableLM(CFG, [{"name": "ntp"}, {"name": "top", "window": 8}])
    return Trainer(lm, cfg, tmp_path, batch_fn=_batch, run_config={})


def test_train_records_have_tokens_throughput_and_model_tflops(tmp_path):
    _trainer(tmp_path, peak_tflops=1.0).fit()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [2, 4] and [r["tokens"] for r in records] == [2 * 4 * T, 4 * 4 * T]
    flops = flops_per_token(TrainableLM(CFG, [{"name": "ntp"}, {"name": "top", "window": 8}]), T)
    for r in records:
        assert r["tflops"] == pytest.approx(r["tokens_per_s"] * flops / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / 1.0)  # against the configured 1 TFLOP/s peak
    meta = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert meta["objectives"] == ["ntp", "top"]


def test_tensorboard_events_when_installed(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("open", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def close(self):
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    trainer = _trainer(tmp_path, ckpt_every=2)
    trainer.eval_fn = lambda model: {"val_loss": 1.5}
    trainer.fit()
    assert calls[0] == ("open", str(tmp_path / "tensorboard"), None) and calls[-1] == ("close",)
    tags = {c[0] for c in calls[1:-1]}
    assert {"train/loss", "train/ntp_loss", "train/top_loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
            "eval/val_loss"} <= tags and "train/skipped" not in tags
    calls.clear()
    _trainer(tmp_path, ckpt_every=2, steps=6).fit(resume=True)
    assert calls[0][2] == 4  # resumed: events after the checkpoint are purged
    calls.clear()
    _trainer(tmp_path / "off", tensorboard=False).fit()
    assert calls == []


def test_data_position_is_checked_on_resume(tmp_path):
    first = _trainer(tmp_path, ckpt_every=2)
    first.data_state = lambda step: {"data": "abc", "seed": 0, "next": step}
    first.fit()
    again = _trainer(tmp_path, steps=6)
    again.data_state = lambda step: {"data": "abc", "seed": 0, "next": step}
    again.fit(resume=True)  # same data: fine
    other = _trainer(tmp_path, steps=8)
    other.data_state = lambda step: {"data": "xyz", "seed": 0, "next": step}
    with pytest.raises(ForesightError, match="data was 'abc', now 'xyz'"):
        other.fit(resume=True)


def test_decay_all_puts_every_parameter_under_weight_decay():
    lm = TrainableLM(CFG, [{"name": "ntp"}])
    default = make_optimizer(lm, TrainConfig(steps=1, batch_size=1))
    assert default.param_groups[1]["params"] and all(p.dim() < 2 for p in default.param_groups[1]["params"])
    everything = make_optimizer(lm, TrainConfig(steps=1, batch_size=1, decay_all=True))
    assert len(everything.param_groups[0]["params"]) == len(list(lm.parameters()))
    assert not everything.param_groups[1]["params"]


@pytest.mark.parametrize("size, run, tokens_per_s, mfu_percent", [
    ("340m", "ntp", 83_600, 28), ("340m", "top", 79_700, 29), ("1.8b", "ntp", 27_600, 41), ("1.8b", "top", 26_900, 42),
])
def test_mfu_reproduces_the_anchor_table(size, run, tokens_per_s, mfu_percent):
    """docs/baselines.md: measured tokens/s of the paper's models -> the MFU it lists, at 790 TFLOP/s."""
    from pathlib import Path

    from foresight.tasks.recipe import complete_model, load_recipe

    recipe = load_recipe(str(Path(__file__).resolve().parents[2] / "configs" / "text" / f"{size}.yaml"), [])
    with torch.device("meta"):
        lm = TrainableLM(complete_model(recipe.run_models[run], max_seq_len=4096), recipe.runs[run])
    mfu = tokens_per_s * flops_per_token(lm, 4096) / 790e12
    assert abs(100 * mfu - mfu_percent) <= 0.5
