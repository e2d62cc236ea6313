"""Run an untrusted Python program (a model's completion plus its unit tests) in a throw-away subprocess.

What the sandbox does, and what it does not:

- ``python -I`` (isolated mode: no user site-packages, no PYTHON* variables, the script's folder not on the
  path), in a fresh temporary directory that is its working directory, ``HOME`` and ``TMPDIR``, removed after.
- No stdin; stdout and stderr go to files in that directory (no pipe to fill and block on), capped by the
  file-size limit; the tail of stderr becomes the result line.
- An environment of its own (``PATH``, ``HOME``, ``TMPDIR``, ``LANG``): none of our variables (tokens, keys).
- Resource limits set in the child before ``exec``: CPU seconds, address space (default 1 GiB: a huge
  allocation raises MemoryError), file size, open files, and the number of processes (binding for a normal
  user only: Linux exempts root). So that a fork bomb is stopped as root too, the parent counts the
  processes of the program's group every ``POLL`` seconds (``/proc``) and kills the group above
  ``MAX_PROCESSES`` (a bomb can outgrow that between two looks, but not for longer than one interval).
- Its own session / process group, killed as a whole (SIGKILL) at the wall-clock timeout and after every run,
  so no child outlives it.

It is not a jail: the program can read what the user can read and write outside its directory where the user
may. Run untrusted code as an unprivileged user, in a container, for anything beyond benchmark completions.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MEMORY_BYTES = 1 << 30  # address space: enough for the interpreter and the tests, not for a runaway list
FILE_BYTES = 16 << 20  # any one file it writes (stdout, stderr included)
MAX_PROCESSES = 64  # RLIMIT_NPROC (per user; not binding for root)
OPEN_FILES = 256
TAIL_CHARS = 2000  # of stderr, kept for the result line
POLL = 0.1  # seconds between looks at the process count


@dataclass
class RunResult:
    passed: bool
    result: str  # "passed", "timed out", "failed: more than N processes" or "failed: <the last line of stderr>"
    seconds: float
    returncode: int | None  # None when killed at the timeout
    pid: int  # the program's process id (also its process group), for tests that check it is gone
    stdout: str = ""  # the first TAIL_CHARS characters


def _limits(cpu_seconds: int, memory_bytes: int) -> None:
    """Runs in the child between fork and exec (the limits are inherited by anything it starts)."""
    for what, value in ((resource.RLIMIT_CPU, cpu_seconds), (resource.RLIMIT_AS, memory_bytes),
                        (resource.RLIMIT_FSIZE, FILE_BYTES), (resource.RLIMIT_NOFILE, OPEN_FILES),
                        (resource.RLIMIT_NPROC, MAX_PROCESSES), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(what, (value, value))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (or reaped and its group empty)


def _group_size(pgid: int) -> int:
    """Live (not zombie) processes whose process group is ``pgid``, from /proc (0 where there is no /proc)."""
    n = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            n += 1
    return n


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str | None]:
    """(exit status, None) or (None, why it was stopped): the wall clock or too many processes."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(POLL, deadline - time.perf_counter()))), None
        except subprocess.TimeoutExpired:
            pass
        if time.perf_counter() >= deadline:
            return None, "timed out"
        if _group_size(proc.pid) > MAX_PROCESSES:
            return None, f"failed: more than {MAX_PROCESSES} processes"


def _tail(path: Path, n: int = TAIL_CHARS, head: bool = False) -> str:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if not head:
                f.seek(max(0, size - n))
            return f.read(n).decode("utf-8", "replace")
    except OSError:
        return ""


def _failure_line(stderr: str, returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name  # SIGXCPU: the CPU limit; SIGKILL: killed
        except ValueError:
            name = f"signal {-returncode}"
        return f"failed: killed by {name}"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit status {returncode}"
    return "failed: " + last[:200]


def run_program(source: str, timeout: float = 5.0, memory_bytes: int = MEMORY_BYTES,
                python: str | None = None) -> RunResult:
    """Run ``source`` as a script in the sandbox (see the module doc); passed = exit status 0 within ``timeout``
    wall-clock seconds."""
    cpu = max(1, int(timeout) + 1)  # CPU seconds: a busy loop is stopped even if the wall clock were not checked
    work = Path(tempfile.mkdtemp(prefix="foresight-sandbox-"))
    try:
        (work / "program.py").write_text(source, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen([python or sys.executable, "-I", "program.py"], cwd=work, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                    close_fds=True, preexec_fn=lambda: _limits(cpu, memory_bytes))
            rc, stopped = _wait(proc, timeout)
            _kill_group(proc.pid)  # the program and anything it started, finished or not
            if rc is None:
                proc.wait()
            seconds = time.perf_counter() - t0
        stdout = _tail(work / "stdout", head=True)
        if rc is None:
            return RunResult(False, stopped, seconds, None, proc.pid, stdout)
        if rc == 0:
            return RunResult(True, "passed", seconds, 0, proc.pid, stdout)
        return RunResult(False, _failure_line(_tail(work / "stderr"), rc), seconds, rc, proc.pid, stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
