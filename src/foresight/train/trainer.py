"""One trainer for every task: AdamW, warm-up + cosine, clipping, accumulation, autocast, checkpoints.

The data is a pure function of the step (``batch_fn(step) -> Batch``), so a resumed run sees exactly the
batches the uninterrupted run would have seen; ``data_state(step)``, when given, describes that position
(data fingerprint, order, ...) and is stored in checkpoints, and resuming on data that would give other
batches is an error. Objective losses are divided once per optimiser step by counts taken over the whole
step, so accumulation gives the same update as one big batch.

Metrics: JSON lines always (``metrics.jsonl``), TensorBoard too when it is installed. Train lines hold the
loss per objective, learning rate, gradient norm, tokens seen, tokens/s and achieved model TFLOP/s
(``foresight.train.flops``); on CUDA also MFU against the device's peak and peak memory.

Speed and memory (``TrainConfig``): every transformer block (trunk, MTP heads, DS-MTP modules) is compiled
with ``torch.compile`` on CUDA, and on the CPU for long runs (``train.compile``); trunk blocks can recompute their
activations in the backward (``train.activation_checkpointing``); MTP and DS-MTP heads run forward and backward one at
a time (``train.per_head_backward``, Meta MTP §2; see ``TrainableLM.forward_backward``). None changes the
gradients beyond rounding, nor the checkpoints' keys; evaluation and generation run the blocks eagerly.

Data parallel (under ``torchrun``; ``foresight.train.distributed``): the model is sharded with FSDP2, each rank
trains on its slice of every global batch, counts (and logged loss sums) are summed over ranks, so a step
equals the one-process step on the same global batch; every rank evaluates (the same numbers, rank 0's are
used), rank 0 alone prints and writes metrics, and checkpoints are sharded DCP folders written by every rank.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model import Block
from foresight.model.layers import training_forward
from foresight.model.limits import state_mismatch
from foresight.objectives.weights import weight_at
from foresight.train import distributed
from foresight.train.checkpoint import (
    UnreadableCheckpoint,
    confined,
    is_sharded,
    list_checkpoints,
    load_sharded,
    newest_readable,
    read_checkpoint_file,
    save_checkpoint,
    save_sharded,
    shapes_of,
)
from foresight.train.config import TrainConfig
from foresight.train.distributed import DataParallel, clip_grad_norm
from foresight.train.fingerprint import differences
from foresight.train.flops import flops_per_token, peak_flops
from foresight.train.lm import TrainableLM
from foresight.train.loggers import Loggers
from foresight.train.metrics import MetricsWriter
from foresight.train.progress import progress
from foresight.train.schedule import lr_at, value_lr_multiplier


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ForesightError(f"train.device={name} but no CUDA device is available; use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ForesightError(f"train.device: unknown device {name!r}; use auto, cpu or cuda") from None


# On a CPU, compiling pays only over a long run: inductor's C++ blocks made the star-graph demo step 1.2-1.25x
# faster (benchmarks/cpu_step.py, issue 13) for 20-40 s of compilation in a fresh process.
CPU_COMPILE_MIN_STEPS = 2000


def use_compile(setting: str | bool, backend: str, device: torch.device, steps: int | None = None) -> bool:
    """``train.compile``: "auto" compiles on CUDA, where inductor also needs Triton, and on the CPU for runs of at
    least ``CPU_COMPILE_MIN_STEPS`` steps when a C++ compiler is installed (inductor's CPU code); true/false force
    it."""
    if setting == "auto":
        if device.type == "cuda":
            return backend != "inductor" or importlib.util.find_spec("triton") is not None
        if device.type == "cpu" and steps is not None and steps >= CPU_COMPILE_MIN_STEPS:
            compilers = (os.environ.get("CXX", "g++"), "g++", "clang++")
            return backend != "inductor" or any(shutil.which(c) for c in compilers)
        return False
    return bool(setting)


def speed_up(lm: TrainableLM, cfg: TrainConfig, device: torch.device) -> bool:
    """Set the training path of ``lm``'s blocks (see ``Block``); returns whether they are compiled.

    Every block is compiled (one graph for all of them: same code, same shapes); only trunk blocks are
    checkpointed, as MTP heads and DS-MTP modules already hold one head's activations at a time.
    """
    compiled = use_compile(cfg.compile, cfg.compile_backend, device, cfg.steps)
    if compiled:
        try:
            training_forward(cfg.compile_backend, False)  # compiles lazily, but checks the backend name now
        except RuntimeError:
            raise ForesightError(f"train.compile_backend={cfg.compile_backend!r} is not a torch.compile backend; "
                                 f"use inductor (default), aot_eager or eager") from None
    for m in lm.modules():
        if isinstance(m, Block):
            m.compile_backend = cfg.compile_backend if compiled else None
    for block in lm.model.layers:
        block.checkpointing = cfg.activation_checkpointing
    return compiled


def make_optimizer(lm: TrainableLM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only, or on every parameter with ``cfg.decay_all``.

    UltraMemV2's shared value table (values and pre-values) is a group of its own, marked ``memory_values``: its
    learning rate carries ``value_lr_multiplier`` (UltraMemV2, docs/memory.md), set each step with the others."""
    table = lm.model.memory_table
    memory = {id(p) for p in table.parameters()} if table is not None else set()
    params = {id(p): p for p in lm.parameters() if p.requires_grad}.values()  # a tied weight once
    plain = [p for p in params if id(p) not in memory]
    decay = [p for p in plain if p.dim() >= 2 or cfg.decay_all]
    no_decay = [p for p in plain if p.dim() < 2 and not cfg.decay_all]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    values = [p for p in params if id(p) in memory]
    if values:
        groups.append({"params": values, "weight_decay": cfg.weight_decay, "memory_values": True})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


class Diverged(ForesightError):
    """Too many consecutive non-finite steps (``train.max_skipped_steps``): the CLI exits with status 1."""

    exit_code = 1


class _NoMetrics:
    """What ranks other than 0 write metrics to."""

    def write(self, record: dict) -> None:
        pass


class Trainer:
    """Trains ``lm`` for ``cfg.steps`` steps, writing ``metrics.jsonl`` and ``checkpoints/`` under ``run_dir``.

    ``run_config`` is stored in every checkpoint so a model can be rebuilt from it; ``eval_fn(model)`` returns
    a dict of floats and is called every ``eval_every`` steps and at the end; ``data_state(step)`` (optional)
    returns a JSON-able description of the data position before ``step`` (see the module docstring).
    ``should_stop()`` (optional) is asked before every step; when it says True (SIGTERM, a time limit) the run
    ends there like a finished one, with a final evaluation and checkpoint, and ``partial`` is set.
    """

    def __init__(
        self,
        lm: TrainableLM,
        cfg: TrainConfig,
        run_dir: Path,
        batch_fn: Callable[[int], Batch],
        run_config: dict,
        eval_fn: Callable[[torch.nn.Module], dict] | None = None,
        desc: str = "train",
        data_state: Callable[[int], dict] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = True,
        settings: dict | None = None,
        allow_changes: bool = False,
    ) -> None:
        self.cfg, self.run_dir, self.batch_fn, self.eval_fn, self.desc = cfg, Path(run_dir), batch_fn, eval_fn, desc
        self.should_stop = should_stop  # checked between steps: True ends the run early, as a partial run
        self.progress_bar = progress  # False: no progress bar (several runs printing side by side)
        self.data_state = data_state
        self.run_config = run_config
        # the run's settings (``foresight.train.fingerprint``), stored in checkpoints and checked on resume;
        # None: not checked (a library caller that gives none); allow_changes: differences are warnings
        self.settings = settings
        self.allow_changes = allow_changes
        distributed.check_joined(cfg)  # the entry point joins a torchrun job (and leaves it); the Trainer only uses it
        self.device = distributed.device_for(cfg.device) if distributed.world_size() > 1 else pick_device(cfg.device)
        self.dp = DataParallel(self.device)
        # Data parallel: ranks > 0 may hold a meta model; ``shard`` puts every rank's shards on its device.
        self.lm = lm if self.dp.enabled else lm.to(self.device)
        if cfg.freeze == "trunk":
            if self.dp.enabled:
                raise ForesightError("train.freeze: trunk is not supported with torchrun yet; "
                                     "train the heads in one process")
            self.lm.freeze_trunk(cfg.unfreeze_blocks)
        self.compiled = speed_up(self.lm, cfg, self.device)  # attributes of the blocks only: meta is fine
        self.dp.shard(self.lm)  # before the optimiser, which must hold the sharded parameters
        self.main = self.dp.rank == 0
        self.opt = make_optimizer(self.lm, cfg)
        self.step = 0
        self.streak = 0  # consecutive evaluations at or above the early-stop threshold
        self.evals: list[dict] = []
        self.stopped_early = False
        self.skipped_steps = 0  # non-finite steps skipped so far (the optimiser did not step)
        self.skip_streak = 0  # ... of which the latest ones in a row
        self.partial = False  # stopped by should_stop() (a signal, a time limit) before the schedule's end

    # ----------------------------------------------------------------------------------------- state
    def progress(self) -> dict:
        """Where the run stands, without tensors: step, early-stop streak, evaluations, config, data position."""
        state = {"step": self.step, "streak": self.streak, "evals": self.evals, "config": self.run_config,
                 "skipped_steps": self.skipped_steps, "skip_streak": self.skip_streak, "torch": torch.__version__}
        if self.data_state is not None:
            state["data"] = self.data_state(self.step)  # where the next batch comes from
        if self.settings is not None:
            state["settings"] = self.settings
        return state

    def state_dict(self) -> dict:
        """A one-process checkpoint (``step_XXXXXXXX.safetensors``)."""
        state = {"lm": self.lm.state_dict(), "optimizer": self.opt.state_dict(), **self.progress(),
                 "rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def sharded_meta(self) -> dict:
        """What a sharded checkpoint holds besides the tensors (collective: gathers every rank's RNG state)."""
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {**self.progress(), "rng": distributed.gather(rng), "world_size": self.dp.world}

    def _check_data(self, saved: dict | None, path: Path) -> None:
        """Resuming must continue on the same data in the same order, or the run is not the same run."""
        if self.data_state is None or saved is None:
            return
        now = self.data_state(self.step)
        for key in [*now, *(k for k in saved if k not in now)]:  # settings first, the derived position last
            if saved.get(key) != now.get(key):
                problem = (f"{path} was trained on other data or data settings: {key} was {saved.get(key)!r}, now "
                           f"{now.get(key)!r}")
                if self.allow_changes:
                    self._warn(f"--allow-changes: {problem}; continuing on the new data")
                    return
                raise ForesightError(f"{problem}; resume with the same data and recipe, start a new run folder, "
                                     f"or add --allow-changes to continue anyway")

    def _warn(self, message: str) -> None:
        if self.main:
            print(f"foresight: warning: {message}", file=sys.stderr, flush=True)

    def _check_settings(self, saved: dict | None, path: Path) -> None:
        """A resumed run must be the run that wrote the checkpoint: every setting that changes what a step computes
        is compared (``foresight.train.fingerprint``); the first difference is one line, or with
        ``allow_changes`` every difference is a warning. A checkpoint from before settings were stored is
        resumed with a warning."""
        if self.settings is None:
            return
        if not isinstance(saved, dict):
            self._warn(f"{path} records no run settings (written before foresight stored them); resuming without "
                       f"checking that the recipe is unchanged")
            return
        changed = differences(saved, self.settings)
        if not changed:
            return
        if self.allow_changes:
            self._warn(f"--allow-changes: continuing {path} with changed settings: " + "; ".join(changed))
            return
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ForesightError(f"--resume: {changed[0]}{more}; resume with the run's recipe, start a new run folder, "
                             f"or add --allow-changes to continue with the new settings")

    def resume(self) -> bool:
        """Load the newest readable checkpoint of this run folder (a broken newer one is named on stderr and
        skipped); False if there is none."""
        found = confined(list_checkpoints(self.run_dir / "checkpoints"), self.run_dir)  # none linked elsewhere
        if not found:
            return False
        # Data parallel: a checkpoint is found unreadable (meta or index) before any collective, from the same
        # files on every rank, so every rank falls back alike.
        newest_readable([p for _, p in found], self._resume_from)
        return True

    def _resume_from(self, path: Path) -> None:
        if is_sharded(path):  # any number of processes (DCP reshards), one included
            state = load_sharded(path, self.lm, self.opt)
            rngs = state["rng"]
            rng = rngs[self.dp.rank] if self.dp.rank < len(rngs) else rngs[0]
            torch.set_rng_state(rng["cpu"])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        elif self.dp.enabled:
            raise ForesightError(f"{path} was written by one process; resume it in one process (without torchrun), "
                                 f"or start a new run folder")
        else:
            state = read_checkpoint_file(path, map_location=self.device)
            if not isinstance(state.get("optimizer"), dict):
                raise UnreadableCheckpoint(f"{path} holds no optimiser state (an imported or exported model?); "
                                           f"start a new run, with text.init_from={path} to begin from its weights")
            self._check_settings(state.get("settings"), path)  # before shapes: it names the setting, not a tensor
            if problem := state_mismatch(shapes_of(self.lm.state_dict()), shapes_of(state["lm"])):
                raise ForesightError(f"{path} does not match this recipe's model: {problem}")
            self.lm.load_state_dict(state["lm"])
            try:
                self.opt.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise ForesightError(f"{path}: its optimiser state does not fit this run's optimiser "
                                     f"({str(e).splitlines()[0][:160]})") from None
            # RNG states must be CPU byte tensors, but map_location moved every tensor to the training device.
            torch.set_rng_state(state["rng_cpu"].cpu())
            if self.device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step, self.streak, self.evals = state["step"], state["streak"], state["evals"]
        self.skipped_steps, self.skip_streak = state.get("skipped_steps", 0), state.get("skip_streak", 0)
        if is_sharded(path):  # a sharded checkpoint's settings are read with its tensors
            self._check_settings(state.get("settings"), path)
        self._check_data(state.get("data"), path)

    def _save(self) -> None:
        folder = self.run_dir / "checkpoints"
        if self.dp.enabled:
            save_sharded(folder, self.step, self.lm, self.opt, self.sharded_meta(), self.cfg.keep_last)
        else:
            save_checkpoint(folder, self.step, self.state_dict(), self.cfg.keep_last)

    # ------------------------------------------------------------------------------------------ step
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def train_step(self, batch: Batch) -> dict:
        """One optimiser step over ``batch`` (split into micro-batches); returns the logged numbers."""
        cfg, lm = self.cfg, self.lm
        batch = self.dp.local_rows(batch).to(self.device)  # data parallel: this rank's rows of the global batch
        micro = [batch.rows(i, i + cfg.micro_batch_size) for i in range(0, batch.tokens.shape[0], cfg.micro_batch_size)]
        # Global divisors for the whole step (no forward pass needed), summed over every rank's rows.
        per_micro = [lm.counts(mb) for mb in micro]
        totals = self.dp.sum(torch.stack([sum(c[k] for c in per_micro) for k in lm.objectives]))
        counts = {k: totals[i].clamp(min=1).float() for i, k in enumerate(lm.objectives)}
        weights = {k: weight_at(w, self.step, cfg.steps) for k, w in lm.weights.items()}
        scales = {k: weights[k] / float(counts[k]) for k in lm.objectives}  # what each loss sum is multiplied by
        sums = {k: torch.zeros((), device=self.device) for k in lm.objectives}
        extras: dict[str, torch.Tensor] = {}
        # The MoE load-balancing loss: a mean per micro-batch, so each micro-batch's weighs 1 / (micro-batches of
        # the step on every rank); data parallel sums gradients (and logged numbers) over ranks.
        aux_weight = lm.model.cfg.moe_aux_weight if lm.model.cfg.ffn == "moe" else 0.0
        aux_share = 1.0 / (len(micro) * self.dp.world)
        aux_scale = aux_weight * aux_share
        for mb in micro:
            # aux: this micro-batch's MoE load-balancing loss (the trunk's output, None without MoE)
            if cfg.per_head_backward:  # one objective, one head at a time (Meta MTP §2)
                outs, aux = lm.forward_backward(mb, scales, self._autocast, self.dp.hold_shared, aux_scale,
                                                with_aux=True)
            else:  # the reference: one graph, one backward
                with self._autocast():
                    outs, aux = lm(mb, with_aux=True)
                total = sum(weights[k] * o.loss_sum / counts[k] for k, o in outs.items())
                if aux is not None and aux.requires_grad and aux_scale:
                    total = total + aux_scale * aux
                total.backward()
            if aux is not None:  # logged by name: the mean over the step's micro-batches
                extras["moe_balance"] = extras.get("moe_balance", 0) + aux.detach().float() * aux_share
            for k, o in outs.items():
                sums[k] += o.loss_sum.detach()
                for name, v in o.metrics.items():
                    extras[name] = extras.get(name, 0) + v * (o.count / counts[k])
        if self.dp.enabled:  # the logged losses and diagnostics of the global batch
            names = list(extras)
            flat = self.dp.sum(torch.stack([*(sums[k].float() for k in lm.objectives),
                                            *(torch.as_tensor(extras[n], device=self.device).float() for n in names)]))
            sums = dict(zip(lm.objectives, flat[: len(sums)]))
            extras = dict(zip(names, flat[len(sums):]))
        grad_norm = clip_grad_norm(lm.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lr = lr_at(self.step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
        value_mult = value_lr_multiplier(self.step, start=cfg.memory_value_lr_mult, decay=cfg.memory_value_lr_decay,
                                         total_steps=cfg.steps)
        for group in self.opt.param_groups:
            group["lr"] = lr * value_mult if group.get("memory_values") else lr
        # A non-finite loss or gradient norm skips the step, as the paper's runs do (one sync for both checks).
        finite = bool(torch.isfinite(torch.stack([grad_norm.float(), *(v.float() for v in sums.values())])).all())
        if finite:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        losses = {f"{k}_loss": float(sums[k] / counts[k]) for k in lm.objectives}
        aux_total = aux_weight * float(extras.get("moe_balance", 0.0))  # what the balance loss added
        record = {
            "loss": sum(weights[k] * losses[f"{k}_loss"] for k in lm.objectives) + aux_total,
            **losses,
            **{k: float(v) for k, v in extras.items()},
            "lr": lr,
            "grad_norm": float(grad_norm),
            "skipped": not finite,
        }
        record.update({f"{k}_weight": w for k, w in weights.items() if isinstance(lm.weights[k], list)})
        if lm.model.memory_table is not None:
            record["memory_value_lr"] = lr * value_mult
        return record

    # ------------------------------------------------------------------------------------------- fit
    def evaluate(self) -> dict:
        with self.dp.gathered():  # data parallel: the shared embedding, norm and head, whole on every rank
            result = {k: float(v) for k, v in self.eval_fn(self.lm.model).items()}
        result = distributed.agree(result)  # every rank computed it; all decide (early stop) on rank 0's
        self.evals.append({"step": self.step, **result})
        metric = self.cfg.early_stop_metric
        if metric is not None:
            if metric not in result:
                raise ForesightError(f"train.early_stop_metric={metric!r} is not an eval metric; have {sorted(result)}")
            self.streak = self.streak + 1 if result[metric] >= self.cfg.early_stop_threshold else 0
        return result

    def _count_skip(self, record: dict, warn) -> None:
        """The divergence policy: count skipped steps, warn, and stop after ``max_skipped_steps`` in a row."""
        if not record["skipped"]:
            self.skip_streak = 0
            return
        self.skipped_steps += 1
        self.skip_streak += 1
        limit = self.cfg.max_skipped_steps
        warn(f"warning: step {self.step}: non-finite loss or gradient norm (loss {record['loss']:.4g}, gradient norm "
            f"{record['grad_norm']:.4g}); step skipped ({self.skip_streak} in a row"
            + (f", the run stops at {limit})" if limit else ")"))
        if limit and self.skip_streak >= limit:
            raise Diverged(f"training diverged: {self.skip_streak} consecutive non-finite steps up to step "
                           f"{self.step} ({self.skipped_steps} skipped in all); the likely cause is a learning "
                           f"rate too high for this model (train.lr={self.cfg.lr:g}): lower it, or raise "
                           f"train.warmup_steps; checkpoints written so far are intact")

    def fit(self, resume: bool = False) -> list[dict]:
        """Run to ``cfg.steps`` (or early stop); returns the evaluation history."""
        from foresight.io import clean_temporaries
        from foresight.train.run_folder import acquire, release

        lock = acquire(self.run_dir) if self.main else None  # one run per folder, library callers included
        try:
            if self.main:
                clean_temporaries(self.run_dir / "checkpoints")  # what a killed checkpoint write left
            return self._fit(resume)
        finally:
            if lock is not None:
                release(lock)

    def _fit(self, resume: bool) -> list[dict]:
        cfg = self.cfg
        resumed = resume and self.resume()
        if self.main:
            metrics = MetricsWriter(self.run_dir / "metrics.jsonl", resume_step=self.step if resumed else None)
            tb = Loggers(self.run_dir, cfg, self.desc, purge_step=self.step if resumed else None)
        else:
            metrics, tb = _NoMetrics(), None
        if not resumed:
            metrics.write({"kind": "meta", "step": 0, "params": self.lm.model.num_parameters(),
                           "total_params": sum(p.numel() for p in {id(p): p for p in self.lm.parameters()}.values()),
                           "trainable_params": sum(p.numel() for p in {id(p): p for p in self.lm.parameters()
                                                                       if p.requires_grad}.values()),
                           "objectives": list(self.lm.objectives), "device": str(self.device),
                           "world_size": self.dp.world, "compiled": self.compiled, "train": asdict(cfg)})
        peak = peak_flops(self.device, cfg.peak_tflops)
        flops = None  # per token; known once the first batch gives the sequence length
        # plain lines off a tty
        bar = progress(cfg.steps, self.step, self.desc, enabled=self.main and self.progress_bar)
        say = bar.write
        # Warnings go to stderr; tqdm.write keeps a live bar intact.
        warn = (lambda message: tqdm.write(message, file=sys.stderr)) if self.main else (lambda message: None)
        tokens_since, time_since = 0, time.perf_counter()
        start = time.perf_counter()
        try:
            while self.step < cfg.steps and not self.stopped_early:
                stop_here = cfg.stop_after is not None and self.step >= cfg.stop_after  # also when resumed past it
                if stop_here or (self.should_stop is not None and self.should_stop()):
                    self.partial = True
                    break
                batch = self.batch_fn(self.step)
                record = self.train_step(batch)
                self.step += 1
                self._count_skip(record, warn)
                record["skipped_steps"] = self.skipped_steps
                step_tokens = batch.tokens.shape[0] * batch.seq_len
                tokens_since += step_tokens
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    if flops is None:
                        flops = flops_per_token(self.lm, batch.seq_len)
                    rate = tokens_since / max(now - time_since, 1e-9)
                    record.update(tokens=self.step * step_tokens, tokens_per_s=rate, tflops=rate * flops / 1e12)
                    if peak is not None:  # rate and flops are the whole job's: peak is per device
                        record["mfu"] = rate * flops / (peak * self.dp.world)
                    tokens_since, time_since = 0, now
                    if self.device.type == "cuda":
                        record["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                    metrics.write({"kind": "train", "step": self.step, "elapsed_s": now - start, **record})
                    if tb is not None:
                        tb.log("train", self.step, record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{rate:,.0f}")
                paused = time.perf_counter()  # evaluation and checkpoints do not count against tokens/s
                at_end = self.step == cfg.steps
                if self.eval_fn is not None and (at_end or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                    result = self.evaluate()
                    metrics.write({"kind": "eval", "step": self.step, **result})
                    if tb is not None:
                        tb.log("eval", self.step, result)
                    say(f"[{self.desc}] step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
                    if cfg.early_stop_metric and self.streak >= cfg.early_stop_patience:
                        self.stopped_early = True
                        say(f"[{self.desc}] early stop: {cfg.early_stop_metric} >= {cfg.early_stop_threshold} "
                            f"for {self.streak} evaluations")
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or at_end or self.stopped_early:
                    self._save()
                time_since += time.perf_counter() - paused
            if self.partial:  # the normal end of a run, at this step: evaluate (unless just done) and save
                say(f"[{self.desc}] stopped at step {self.step} of {cfg.steps}: final evaluation and checkpoint")
                if self.eval_fn is not None and (not self.evals or self.evals[-1]["step"] != self.step):
                    result = self.evaluate()
                    metrics.write({"kind": "eval", "step": self.step, **result})
                    say(f"[{self.desc}] step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
                self._save()
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        return self.evals
