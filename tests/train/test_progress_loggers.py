"""Progress as plain lines when stderr is not a terminal; requested loggers that are missing say so in one line."""

import io
import sys
import types

import pytest

from foresight.errors import ForesightError
from foresight.train.config import TrainConfig
from foresight.train.metrics import read_metrics
from foresight.train.progress import PlainProgress, progress

from test_trainer_metrics import _trainer


def test_plain_progress_prints_periodic_lines_and_a_last_one():
    out = io.StringIO()
    bar = PlainProgress(total=10, initial=2, desc="top", every_s=0.0, file=out)
    bar.set_postfix(loss="4.5281", tok_s="5,057")
    bar.update(1)
    bar.write("[top] step 3: exact_match 0.5")
    bar.close()  # the last state was printed already: no repeat
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[top] step 3/10 (30%) loss=4.5281 tok_s=5,057 elapsed 0:00:0")
    assert lines[1:] == ["[top] step 3: exact_match 0.5"]
    quiet = io.StringIO()
    bar = PlainProgress(total=10, desc="ntp", every_s=3600.0, file=quiet)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert quiet.getvalue().count("\n") == 1 and "step 10/10 (100%)" in quiet.getvalue()


def test_progress_is_plain_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress(5, 0, "x"), PlainProgress)
    progress(5, 0, "x", enabled=False).write("nothing")  # other ranks: silent
    assert sys.stderr.getvalue() == ""


def test_missing_logger_packages_cost_one_line_each_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    _trainer(tmp_path, loggers=["tensorboard", "wandb"]).fit()
    err = capsys.readouterr().err
    assert "train.loggers asks for tensorboard, but the tensorboard package is not installed" in err
    assert "train.loggers asks for wandb, but the wandb package is not installed (pip install wandb)" in err
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"] == [2, 4]


def test_wandb_gets_every_train_number(tmp_path, monkeypatch):
    calls = []
    run = types.SimpleNamespace(log=lambda numbers, step: calls.append((step, numbers)),
                                finish=lambda: calls.append("finish"))
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw["project"], kw["name"])) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    _trainer(tmp_path, loggers=["wandb"], tensorboard=False).fit()
    assert calls[0][0] == "init" and calls[-1] == "finish"
    steps = [c[0] for c in calls[1:-1]]
    assert steps == [2, 4] and "train/loss" in calls[1][1] and "train/tokens_per_s" in calls[1][1]


def test_unknown_logger_is_one_line():
    with pytest.raises(ForesightError, match="train.loggers must be a list of tensorboard, wandb"):
        TrainConfig(loggers=["mlflow"])
