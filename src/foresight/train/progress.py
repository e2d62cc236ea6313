"""Progress on stderr: tqdm's redrawn bar on a terminal, plain periodic lines when stderr is a file or a pipe.

A redrawn bar written to a log file becomes thousands of carriage-return fragments; a job's log wants one
readable line every so often instead: ``[ntp] step 120/1500 (8%) loss=4.5281 tok_s=5,057 elapsed 0:01:12``.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class PlainProgress:
    """The part of tqdm's interface the trainer uses (``update``, ``set_postfix``, ``write``, ``close``), printing a
    line at most every ``every_s`` seconds of wall-clock time, and at the end."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", every_s: float = 30.0, file=None) -> None:
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.file = file or sys.stderr
        self.postfix: dict[str, str] = {}
        self.start = self.last = time.perf_counter()
        self.printed_at = None

    def _line(self) -> None:
        elapsed = int(time.perf_counter() - self.start)
        post = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        pct = f" ({100 * self.n // max(self.total, 1)}%)"
        print(f"[{self.desc}] step {self.n}/{self.total}{pct} {post} elapsed {elapsed // 3600}:"
              f"{elapsed // 60 % 60:02d}:{elapsed % 60:02d}".replace("  ", " "), file=self.file, flush=True)
        self.last, self.printed_at = time.perf_counter(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.every_s:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def write(self, message: str) -> None:
        print(message, file=self.file, flush=True)

    def close(self) -> None:
        if self.printed_at != self.n:
            self._line()


class _Silent:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **values) -> None: ...
    def write(self, message: str) -> None: ...
    def close(self) -> None: ...


def progress(total: int, initial: int, desc: str, enabled: bool = True, every_s: float = 30.0):
    """tqdm on a terminal, ``PlainProgress`` otherwise, nothing when not ``enabled`` (ranks other than 0)."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr,
                    mininterval=0.5, leave=True)
    return PlainProgress(total, initial, desc, every_s)
