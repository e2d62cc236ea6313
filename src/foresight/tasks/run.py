"""The one run loop every task trains through: seed, rank-0 build, Trainer, fit, and the fields every result
record shares (parameter counts, steps, wall-clock, tokens, device and ``foresight.environment`` provenance).

A task (``tasks/stargraph.py``, ``tasks/text.py``) supplies only what differs: the model config and objective
specs of a run, a ``setup(lm)`` hook giving the batches and the evaluation for the built model (``RunHooks``),
and the fields of its own result record on top of ``result_record``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from foresight.environment import describe
from foresight.model import ModelConfig
from foresight.objectives import ObjectiveSpec, as_written
from foresight.train import distributed
from foresight.train.config import TrainConfig
from foresight.train.fingerprint import run_settings
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer


@dataclass
class RunHooks:
    """What a task gives the loop once the model is built (its look-ahead decides the batches' extra tokens)."""

    batch_fn: Callable[[int], object]  # step -> the training Batch of that step
    evaluate: Callable[[TrainableLM], dict] | None = None  # the trainable model -> metrics; None = no evaluation
    data_state: Callable[[int], dict] | None = None  # step -> data position, checked on resume
    run_config: dict | None = None  # task fields added to the checkpoint's run config (data, sequence length)


@dataclass
class FinishedRun:
    """One fitted run, handed back to its task for its own record."""

    name: str
    specs: list[ObjectiveSpec]  # the run's objectives as the recipe parsed them (or plain dicts)
    train_cfg: TrainConfig
    lm: TrainableLM
    trainer: Trainer
    evals: list[dict]
    wall: float  # seconds of fit() in this invocation
    tokens: int  # training tokens of this invocation (a resumed run counts only its new steps)


def train_run(name: str, specs: list[ObjectiveSpec], model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: Path, *,
              raw: dict, tokens_per_step: int, setup: Callable[[TrainableLM], RunHooks], resume: bool = False,
              init: Callable[[TrainableLM], None] | None = None, desc: str | None = None,
              should_stop: Callable[[], bool] | None = None, progress: bool = True,
              task: tuple[str, object] | None = None, allow_changes: bool = False) -> FinishedRun:
    """Train one run of a recipe from ``train_cfg.seed`` and return it fitted.

    ``raw``: the recipe as stored in checkpoints; ``tokens_per_step``: batch size x sequence length;
    ``init(lm)``: on the rank that really builds the model, right after building (e.g. load pretrained weights).
    ``task``: (section name, the task's parsed section), part of the run's settings that ``--resume`` checks
    (``foresight.train.fingerprint``); ``allow_changes``: resume even when those settings changed (a warning).
    """
    torch.manual_seed(train_cfg.seed)  # the same trunk initialisation for every run of one seed
    with distributed.build_on_rank0() as real:  # torchrun: ranks > 0 get rank 0's weights from the Trainer
        lm = TrainableLM(model_cfg, specs)
        if init is not None and real:  # a resumed run then loads its own newer checkpoint over these weights
            init(lm)
    hooks = setup(lm)
    evaluate = hooks.evaluate
    # checkpoints store the objectives' JSON form (as written), which every version can parse again
    run_config = {"recipe": raw, "run": name, "objectives": as_written(specs), "model": asdict(model_cfg),
                  **(hooks.run_config or {})}
    trainer = Trainer(
        lm, train_cfg, run_dir, batch_fn=hooks.batch_fn,
        # the Trainer hands its eval_fn the inference model; the task's hook gets the whole trainable model
        eval_fn=None if evaluate is None else (lambda model: evaluate(lm)),
        run_config=run_config, desc=desc or name, data_state=hooks.data_state, should_stop=should_stop,
        progress=progress, allow_changes=allow_changes,
        settings=run_settings(run=name, specs=specs, model=model_cfg, train=train_cfg, task=task),
    )
    start_step = trainer.step
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)  # peak memory per run, not per process
    t0 = time.perf_counter()
    evals = trainer.fit(resume=resume)
    wall = time.perf_counter() - t0
    return FinishedRun(name, specs, train_cfg, lm, trainer, evals, wall,
                       (trainer.step - start_step) * tokens_per_step)


def total_parameters(lm: TrainableLM) -> int:
    """Parameters of the model and its objective heads, each shared tensor once."""
    return sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())


def result_record(run: FinishedRun) -> dict:
    """The fields every task's result record starts with: what ran, how long, where, with which software."""
    trainer = run.trainer
    record = {
        "run": run.name,
        "objectives": as_written(run.specs),
        "params": run.lm.model.num_parameters(),
        "total_params": total_parameters(run.lm),
        "seed": run.train_cfg.seed,
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,  # non-finite steps the optimiser skipped
        "wall_clock_s": round(run.wall, 2),
        "tokens": run.tokens,
        "tokens_per_s_wall": round(run.tokens / max(run.wall, 1e-9), 1),  # compile, evaluation, checkpoints included
        "device": str(trainer.device),
        # device name, torch / CUDA / Triton / Python versions, commit, UTC date (foresight.environment)
        **{("device_name" if k == "device" else k): v for k, v in describe(trainer.device).items()},
    }
    if trainer.dp.world > 1:
        record["world_size"] = trainer.dp.world
    return record
