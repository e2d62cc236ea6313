"""The scheduler every task runs its runs through (``foresight.tasks.pool``) and the one task registry."""

from __future__ import annotations

import os
import signal

import pytest

from foresight.errors import ForesightError
from foresight.tasks import TASKS, Task, get_task, pool
from foresight.tasks.stargraph import StarGraphTaskConfig, run_stargraph
from foresight.tasks.text import TextTaskConfig, run_text


def test_each_task_is_one_record_of_config_class_and_run_function():
    assert TASKS == {"stargraph": Task("stargraph", StarGraphTaskConfig, run_stargraph),
                     "text": Task("text", TextTaskConfig, run_text)}
    with pytest.raises(ForesightError, match="^no task 'nope'; known tasks: stargraph, text$"):
        get_task("nope")


def test_in_turn_every_cell_runs_in_order_with_the_shared_state():
    calls = []

    def work(cell, *, should_stop, scale):
        calls.append((cell, should_stop()))
        return cell * scale, None

    assert pool.run_all([1, 2, 3], work, {"scale": 10}) == ([10, 20, 30], [])
    assert calls == [(1, False), (2, False), (3, False)]


def test_a_signal_ends_the_running_cell_gracefully_and_starts_no_other():
    """SIGTERM (and a first Ctrl-C) do not kill: the running cell sees should_stop() and ends; the rest are not
    run; the handlers before the run are back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def work(cell, *, should_stop):
        if cell == "a":
            os.kill(os.getpid(), signal.SIGTERM)
        seen.append(should_stop())
        return cell, None

    assert pool.run_all(["a", "b", "c"], work, {}) == (["a"], ["b", "c"])
    assert seen == [True] and signal.getsignal(signal.SIGTERM) is before


def test_time_limit_does_not_start_a_cell_estimated_past_it(monkeypatch, capsys):
    monkeypatch.setattr(pool.Clock, "estimate", lambda self, flops: None if self.s_per_flop is None else 1e9)
    done, not_done = pool.run_all(["a", "b"], lambda cell, should_stop: (cell, 1e6), {}, time_limit_s=600,
                                  cost=lambda cell: 1e6, label=lambda cell: f"cell {cell}")
    assert (done, not_done) == (["a"], ["b"])
    assert "time limit: cell b needs about 1000000000 s" in capsys.readouterr().out
