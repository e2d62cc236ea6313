"""Trainer settings (one ``train:`` section of a recipe)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from foresight.errors import ForesightError

LOGGERS = ("tensorboard", "wandb")  # optional metric sinks (train.loggers)


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing of one run."""

    steps: int = 1000  # optimiser steps
    # end the run after this many steps while the lr schedule still spans ``steps`` (a partial result, as a
    # SIGTERM would leave; e.g. which shortcut a star-graph model has formed by step 500 of a 2,500-step run)
    stop_after: int | None = None
    batch_size: int = 64  # sequences per optimiser step
    micro_batch_size: int | None = None  # sequences per forward/backward (gradient accumulation); None = batch_size
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # floor of the cosine decay
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only; norms and biases get none) ...
    decay_all: bool = False  # ... unless true: decay every parameter, as the TOP paper's runs do
    betas: list = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0  # seeds model init and data order
    device: str = "auto"  # "auto" (cuda if present), "cpu", "cuda", "cuda:1", ...
    log_every: int = 10  # steps between metric lines
    eval_every: int = 100  # steps between evaluations; 0 = only at the end
    ckpt_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # checkpoints kept (older ones are deleted)
    early_stop_metric: str | None = None  # eval metric watched for early stopping, e.g. exact_match
    early_stop_threshold: float = 0.995  # stop once the metric is >= this ...
    early_stop_patience: int = 2  # ... for this many consecutive evaluations
    tensorboard: bool = True  # also write TensorBoard events when the tensorboard package is installed (silently)
    loggers: list = field(default_factory=list)  # metric sinks beside metrics.jsonl: "tensorboard", "wandb" (loud)
    peak_tflops: float | None = None  # accelerator peak for MFU; None = by GPU name (H100/H200: 790, measured bf16)
    # torch.compile every block: "auto" (CUDA with Triton; CPU runs >= 2000 steps), true, false
    compile: str | bool = "auto"
    compile_backend: str = "inductor"  # torch.compile backend; "aot_eager" checks the wiring without code generation
    activation_checkpointing: bool = False  # recompute each trunk block's activations in the backward (less memory)
    per_head_backward: bool = True  # MTP/DS-MTP heads: forward+backward one head at a time (Meta MTP §2)
    max_skipped_steps: int = 10  # this many consecutive non-finite steps stop the run (exit 1); 0 = never stop
    # UltraMemV2 (model.ffn: ultramem): the shared memory values and pre-values train at this multiple of the
    # learning rate at step 0, decaying linearly to 1x at this fraction of the run (UltraMemV2: 4x -> 1x over the run)
    memory_value_lr_mult: float = 4.0
    memory_value_lr_decay: float = 1.0
    freeze: str = "none"  # "trunk": only the objectives' own heads/modules train; embedding, blocks, norm, head stay
    # with freeze: trunk, the last N transformer blocks and the final norm train too (continued training on a budget)
    unfreeze_blocks: int = 0

    def __post_init__(self) -> None:
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip", "early_stop_threshold", "peak_tflops",
                     "memory_value_lr_mult", "memory_value_lr_decay", *(
                     f"betas[{i}]" for i in range(len(self.betas) if isinstance(self.betas, list) else 0))):
            value = self.betas[int(name[6])] if name.startswith("betas") else getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ForesightError(f"train.{name} must be a finite number, got {value!r}")
        checks = [
            (self.steps >= 1, "train.steps must be >= 1"),
            (self.stop_after is None or (isinstance(self.stop_after, int) and not isinstance(self.stop_after, bool)
                                         and 1 <= self.stop_after <= self.steps),
             "train.stop_after must be null or an integer in 1 .. train.steps"),
            (self.batch_size >= 1, "train.batch_size must be >= 1"),
            (1 <= self.micro_batch_size <= self.batch_size, "train.micro_batch_size must be in 1 .. batch_size"),
            (self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size == 0,  # 0: refused just above
             "train.batch_size must be a multiple of train.micro_batch_size"),
            (0 < self.lr <= 1, "train.lr must be in (0, 1] (AdamW moves each weight by about lr per step)"),
            (self.memory_value_lr_mult > 0 and 0 < self.memory_value_lr_decay <= 1,
             "train.memory_value_lr_mult must be > 0 and train.memory_value_lr_decay in (0, 1]"),
            (self.max_skipped_steps >= 0, "train.max_skipped_steps must be >= 0 (0 = never stop)"),
            (0 <= self.min_lr <= self.lr, "train.min_lr must be in 0 .. lr"),
            (self.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas must be two numbers in [0, 1)"),
            (self.grad_clip >= 0, "train.grad_clip must be >= 0"),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.eval_every >= 0 and self.ckpt_every >= 0, "train.eval_every and train.ckpt_every must be >= 0"),
            (self.keep_last >= 1, "train.keep_last must be >= 1"),
            (self.early_stop_patience >= 1, "train.early_stop_patience must be >= 1"),
            (self.peak_tflops is None or self.peak_tflops > 0, "train.peak_tflops must be > 0"),
            (isinstance(self.compile, bool) or self.compile == "auto", "train.compile must be auto, true or false"),
            (isinstance(self.loggers, list) and all(x in LOGGERS for x in self.loggers),
             f"train.loggers must be a list of {', '.join(LOGGERS)} (metrics.jsonl is always written), "
             f"got {self.loggers!r}"),
            (self.freeze in ("none", "trunk"), f"train.freeze must be none or trunk, not {self.freeze!r}"),
            (isinstance(self.unfreeze_blocks, int) and not isinstance(self.unfreeze_blocks, bool)
             and self.unfreeze_blocks >= 0, "train.unfreeze_blocks must be an integer >= 0"),
            (self.unfreeze_blocks == 0 or self.freeze == "trunk",
             "train.unfreeze_blocks only applies with train.freeze: trunk (set both, or neither)"),
            (isinstance(self.compile_backend, str) and self.compile_backend != "",
             "train.compile_backend must be a torch.compile backend name, e.g. inductor"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForesightError(message)
