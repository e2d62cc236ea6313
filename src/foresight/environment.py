"""Where a number was measured: device name, software versions, commit and date, for results and benchmarks."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import torch

from foresight import __version__


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str) -> str:
    """``NVIDIA H200`` for a CUDA device, ``CPU (<model name>)`` otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_name()})"


def triton_version() -> str:
    try:
        import triton
    except Exception:  # not installed, or broken
        return "not installed"
    return triton.__version__


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def describe(device: torch.device | str) -> dict:
    """The facts every stored result carries: device, versions, commit, UTC date."""
    device = torch.device(device)
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "triton": triton_version(),
        "python": platform.python_version(),
        "foresight": __version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
