"""The scheduler every task runs its runs through: in turn in this process, or side by side in worker processes,
under one wall-clock budget, stopped gracefully by SIGTERM or Ctrl-C.

A task hands ``run_all`` its units of work (its "cells": one per run, or per (run, seed)) and a function that trains
one, ``work(cell, should_stop=..., progress=..., **shared) -> (result, flops)``: ``should_stop()`` is what the
Trainer asks before every step (a signal, the time limit), ``flops`` the training FLOPs the cell ran (for the
time-limit estimate; None when the task does not count them). ``run_all`` returns the results of the finished
cells, in cell order, and the cells it did not run (stopped or out of time).

Side by side (``jobs > 1``) the cells, ``work`` and ``shared`` go to spawned worker processes, so they must pickle
(``work`` a module-level function). Stopping: the first Ctrl-C or SIGTERM lets every running cell end at its next
step with a final evaluation and checkpoint (its result marked partial) and starts no further cell; a second
Ctrl-C interrupts at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable

import torch

from foresight.train import distributed

Work = Callable[..., tuple[object, float | None]]  # work(cell, should_stop=, progress=, **shared) -> (result, flops)


class Clock:
    """The wall-clock budget of one invocation (``time_limit_s``; None = unlimited).

    Before a cell starts, its cost is estimated from the seconds per training FLOP of the last cell run in this
    process (its compilation, evaluations and checkpoints included; the first cell pays most of the compiling),
    with a 5 % margin, at the cell's full schedule (early stopping is not counted on); a cell that would not
    finish is not started. A cell still running when the time is up stops at its next step with a final
    evaluation and checkpoint, and its result is marked partial.
    """

    def __init__(self, limit_s: float | None) -> None:
        self.start = time.monotonic()
        self.limit_s = limit_s
        self.s_per_flop: float | None = None

    def left(self) -> float:
        """Seconds left: rank 0's clock under torchrun, so every rank stops at the same step."""
        mine = float("inf") if self.limit_s is None else self.limit_s - (time.monotonic() - self.start)
        return mine if self.limit_s is None else distributed.agree(mine)

    def estimate(self, flops: float) -> float | None:
        return None if self.s_per_flop is None else 1.05 * self.s_per_flop * flops

    def observe(self, seconds: float, flops: float | None) -> None:
        if flops:
            self.s_per_flop = seconds / flops


class Signals:
    """SIGTERM (``timeout``, a scheduler) and Ctrl-C set ``stop`` instead of killing the process, so the running
    cells end at their next step with a checkpoint and a partial result; a second Ctrl-C interrupts at once."""

    def __init__(self, event=None) -> None:
        self.event = event  # a multiprocessing Event shared with worker processes, or None
        self.stopped = False
        self._old: dict = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.stopped and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stopped = True
        if self.event is not None:
            self.event.set()
        print(f"\n{signal.Signals(signum).name}: stopping every run at its next step (final evaluation and "
              "checkpoint, result marked partial)", file=sys.stderr, flush=True)

    def __call__(self) -> bool:
        return self.stopped or (self.event is not None and self.event.is_set())


def run_all(cells: list, work: Work, shared: dict, *, jobs: int = 1, time_limit_s: float | None = None,
            cost: Callable[[object], float | None] | None = None, label: Callable[[object], str] = str,
            print_: Callable = print) -> tuple[list, list]:
    """Run every cell through ``work`` (module docstring); returns (results of the finished cells in cell order,
    the cells not run). ``jobs > 1``: that many worker processes; ``cost(cell)``: its training FLOPs at the full
    schedule (for the time limit in turn; None = not estimated); ``label(cell)``: its name in messages."""
    if jobs > 1:
        return _run_side_by_side(cells, work, shared, jobs, time_limit_s, print_)
    return _run_in_turn(cells, work, shared, Clock(time_limit_s), cost, label, print_)


def _run_in_turn(cells: list, work: Work, shared: dict, clock: Clock, cost, label, print_) -> tuple[list, list]:
    """Cells one after the other in this process (with every thread torch uses)."""
    results: list = []
    with Signals() as signals:
        def should_stop() -> bool:
            return signals() or clock.left() <= 0

        for i, cell in enumerate(cells):
            flops = cost(cell) if cost is not None and clock.s_per_flop is not None else None
            need = distributed.agree(clock.estimate(flops)) if flops else None
            if should_stop() or (need is not None and need > clock.left()):
                if need is not None and not should_stop():
                    print_(f"time limit: {label(cell)} needs about {need:.0f} s, {clock.left():.0f} s left; stopping")
                return results, cells[i:]
            t0 = time.perf_counter()
            result, ran = work(cell, should_stop=should_stop, **shared)
            clock.observe(time.perf_counter() - t0, ran)
            results.append(result)
    return results, []


def _run_side_by_side(cells: list, work: Work, shared: dict, jobs: int, time_limit_s: float | None,
                      print_) -> tuple[list, list]:
    """Cells in ``jobs`` worker processes at once, each with cores / jobs torch threads (issue 13: on a small
    CPU one run per core beats one process using every core, whose tiny ops do not split well)."""
    ctx = mp.get_context("spawn")
    event = ctx.Event()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    state = {"work": work, "shared": shared, "deadline": None if time_limit_s is None else time.time() + time_limit_s}
    print_(f"running {len(cells)} cells in {jobs} processes side by side, {threads} thread(s) each")
    results: dict[int, object] = {}
    with Signals(event), ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                               initargs=(state, event, threads)) as pool:
        futures = {pool.submit(_worker_cell, cell): i for i, cell in enumerate(cells)}
        for future in as_completed(futures):
            result = future.result()
            if result is not None:
                results[futures[future]] = result
    done = [results[i] for i in sorted(results)]  # in cell order, whatever finished first
    return done, [c for i, c in enumerate(cells) if i not in results]


# Worker processes (jobs > 1): the work function and the state every cell shares, set once per process.
_WORKER: dict = {}


def _worker_init(state: dict, event, threads: int) -> None:
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which sets the shared event
    signal.signal(signal.SIGTERM, lambda *_: event.set())  # a TERM sent to the whole group: the same stop
    _WORKER.update(state, event=event)


def _worker_cell(cell):
    w = _WORKER
    event, deadline = w["event"], w["deadline"]

    def should_stop() -> bool:
        return event.is_set() or (deadline is not None and time.time() >= deadline)

    if should_stop():
        return None  # stopped (or out of time) before this cell began: not run
    result, _ = w["work"](cell, should_stop=should_stop, progress=False, **w["shared"])
    return result
