"""TensorBoard event files beside metrics.jsonl, when ``torch.utils.tensorboard`` imports (it needs the
optional ``tensorboard`` package; foresight does not depend on it)."""

from __future__ import annotations

import math
from pathlib import Path


def open_writer(run_dir: Path, enabled: bool, purge_step: int | None):
    """A SummaryWriter under ``run_dir/tensorboard``, or None when disabled or not installed.

    ``purge_step``: on resume, events logged after the checkpoint are dropped, like metrics.jsonl lines.
    """
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or a broken tensorboard install: JSON lines are still written
        return None
    from foresight.io import note_written

    note_written(run_dir / "tensorboard", "tree")  # its files are written by tensorboard itself
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def log_scalars(writer, group: str, step: int, record: dict) -> None:
    """Every finite number of ``record`` as ``group/key``."""
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step" and math.isfinite(value):
            writer.add_scalar(f"{group}/{key}", value, step)
