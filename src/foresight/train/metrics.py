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
    """The records of a metrics file; a line cut short by a kill is skipped, a complete line of the wrong shape
    is one line naming the file, line and key (``_check_record``)."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:  # bad bytes: the line fails as JSON or the check
        for number, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    continue  # a line cut short by a kill: skip it
                _check_record(record, path, number)
                records.append(record)
    return records


def _check_record(record, path: Path, number: int) -> None:
    """What the trainer (on resume) and ``compare`` read: an object with an integer ``step`` >= 0 and a string
    ``kind``; numbers (and booleans) only in train and eval lines; in the meta line, parameter counts and the
    objective list (issue 21: ``"step": "x"`` or a list in place of a line used to end in a traceback)."""
    def fail(what: str):
        raise ForesightError(f"{path} line {number}: {what}; the file was damaged or edited (fix or remove that "
                             f"line)")

    if not isinstance(record, dict):
        fail("not a JSON object")
    kind, step = record.get("kind", "train"), record.get("step", 0)
    if not isinstance(kind, str):
        fail(f"kind must be a string, got {json.dumps(kind)[:40]}")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        fail(f"step must be an integer >= 0, got {json.dumps(step)[:40]}")
    if kind in ("train", "eval"):
        for key, value in record.items():
            if key != "kind" and not isinstance(value, (int, float)):  # bool too: "skipped"
                fail(f"{key} must be a number, got {json.dumps(value)[:40]}")
    elif kind == "meta":
        for key in ("params", "total_params", "trainable_params"):
            value = record.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                fail(f"{key} must be an integer >= 0, got {json.dumps(value)[:40]}")
        objectives = record.get("objectives", [])
        if not isinstance(objectives, list) or not all(isinstance(o, str) for o in objectives):
            fail(f"objectives must be a list of names, got {json.dumps(objectives)[:40]}")


def training_tokens_per_s(records: list[dict]) -> float | None:
    """The tokens/s that tables and result files report (one definition everywhere): the median over the logged
    training intervals of tokens / seconds of training, the seconds between two train lines minus evaluation and
    checkpoint time (what each train line's ``tokens_per_s`` holds). None when nothing was logged."""
    rates = [r["tokens_per_s"] for r in records if r.get("kind", "train") == "train"
             and isinstance(r.get("tokens_per_s"), (int, float))]
    return median(rates) if rates else None
