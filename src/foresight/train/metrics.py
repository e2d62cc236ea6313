"""Metrics as JSON lines: one object per line, ``{"kind": "train" | "eval", "step": ..., ...}``."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median

from foresight.errors import ForesightError
from foresight.io import MANIFEST, is_recorded, note_written, write_text


class MetricsWriter:
    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None and path.exists() and is_recorded(path) is False:
            # In a run folder whose manifest does not list it, the file is not foresight's: never replaced.
            raise ForesightError(f"{path} exists but foresight did not write it (it is not in the run folder's "
                                 f"{MANIFEST}); move it away, or choose another --out")
        note_written(path)  # appended to below, not written through atomic_write
        if resume_step is not None and path.exists():
            # Drop lines logged after the checkpoint we resume from, so the file reads like one clean run.
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
            write_text(path, "".join(json.dumps(r) + "\n" for r in kept))  # atomic: a kill keeps the old file
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: skip it
    return records


def training_tokens_per_s(records: list[dict]) -> float | None:
    """The tokens/s that tables and result files report (one definition everywhere): the median over the logged
    training intervals of tokens / seconds of training, the seconds between two train lines minus evaluation and
    checkpoint time (what each train line's ``tokens_per_s`` holds). None when nothing was logged."""
    rates = [r["tokens_per_s"] for r in records if r.get("kind", "train") == "train"
             and isinstance(r.get("tokens_per_s"), (int, float))]
    return median(rates) if rates else None
