"""Where training metrics go: ``metrics.jsonl`` always (``MetricsWriter``), plus the sinks ``train.loggers`` asks
for: ``tensorboard`` (``run/tensorboard/``) and ``wandb`` (Weights & Biases). A requested sink whose package is
missing costs one line on stderr saying what to install, and the run goes on with the others; it is never skipped
silently. ``train.tensorboard: true`` (the default) keeps the old behaviour: TensorBoard events whenever the
package happens to be installed, without a word when it is not.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path

from foresight.train.tensorboard import log_scalars, open_writer


def _say(message: str) -> None:
    print(f"foresight: {message}", file=sys.stderr, flush=True)


class Loggers:
    """The optional sinks of one run; ``log(group, step, record)`` sends every finite number of ``record``."""

    def __init__(self, run_dir: Path, cfg, desc: str, purge_step: int | None = None) -> None:
        self.tb = self.wandb = None
        if cfg.tensorboard or "tensorboard" in cfg.loggers:
            self.tb = open_writer(run_dir, True, purge_step)
            if self.tb is None and "tensorboard" in cfg.loggers:
                _say("train.loggers asks for tensorboard, but the tensorboard package is not installed "
                     "(pip install tensorboard); metrics go to metrics.jsonl only")
        if "wandb" in cfg.loggers:
            try:
                import wandb
            except ImportError:
                _say("train.loggers asks for wandb, but the wandb package is not installed (pip install wandb); "
                     "metrics go to metrics.jsonl only")
            else:
                self.wandb = wandb.init(project="foresight", name=desc, dir=str(run_dir), config=asdict(cfg),
                                        resume="allow")

    def log(self, group: str, step: int, record: dict) -> None:
        log_scalars(self.tb, group, step, record)
        if self.wandb is not None:
            numbers = {f"{group}/{k}": v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                       and not isinstance(v, bool) and math.isfinite(v)}
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
