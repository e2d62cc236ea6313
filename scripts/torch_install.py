"""Which PyTorch build ``scripts/setup`` installs, and the pip arguments for it (standard library only).

``pip install torch==2.13.0`` on an ordinary Linux machine takes PyPI's torch wheel, which is the CUDA build and
pulls NVIDIA's CUDA, cuDNN, cuBLAS and NCCL wheels: several GB, unwanted on a machine with no GPU. The CPU
build is on PyTorch's own CPU index. The choice:

- ``cuda`` (asked for: ``FORESIGHT_TORCH=cuda`` or ``--cuda``; or ``auto`` and ``nvidia-smi`` lists a GPU):
  ``torch==2.13.0`` from the configured indexes (PyPI's Linux wheels are the CUDA build).
- ``cpu`` (asked for, or ``auto`` without a GPU): the plain ``torch==2.13.0`` when pip would resolve it to a
  ``+cpu`` build already (a CPU wheel in a wheel folder or index that pip is configured with, as on this
  project's machines and CI, which reach only the package registries), or on macOS / Windows (PyPI's wheels
  there are CPU builds); otherwise ``torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu``.

What pip would resolve to is asked of pip itself (``pip install --dry-run --report``: metadata only, nothing
installed); a pip that cannot answer counts as "not a CPU build", so the CPU index is used.

    python3 scripts/torch_install.py [--python PY] [--cpu | --cuda]   # prints the pip arguments, one line
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass

TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Measured: torch-2.13.0+cpu-cp311-manylinux_2_28_x86_64.whl is 192 MB, 754 MB unpacked. The CUDA build was not
# downloadable here; its size is that of recent releases' wheels (torch ~0.9 GB + NVIDIA's libraries).
SIZES = {"cpu": "about 190 MB to download, 750 MB installed",
         "cuda": "about 3 GB to download (torch ~0.9 GB plus NVIDIA's CUDA, cuDNN, cuBLAS and NCCL wheels), "
                 "over 5 GB installed"}
CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Choice:
    """``build``: "cpu" or "cuda"; ``pip_args``: what follows ``python -m pip install``; ``why``: one line."""

    build: str
    pip_args: tuple[str, ...]
    why: str


def gpu_present() -> bool:
    """Whether ``nvidia-smi -L`` runs and lists a GPU (a driver that is not loaded answers with an error)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(line.startswith("GPU ") for line in out.stdout.splitlines())


def plain_version(python: str) -> str | None:
    """The torch version that ``python -m pip install torch==2.13.0`` would install here (e.g. ``2.13.0+cpu``), or
    None when pip cannot say (too old for ``--report``, no index reachable, no such wheel)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [python, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
               "--report", report, TORCH]
        try:
            subprocess.run(cmd, capture_output=True, timeout=300, check=True)
            with open(report) as f:
                return json.load(f)["install"][0]["metadata"]["version"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
            return None


def decide(want: str, *, system: str, gpu: bool, plain: str | None) -> Choice:
    """The build and pip arguments for ``want`` (auto / cpu / cuda) on ``system`` (``platform.system()``), given
    whether a GPU is present and the version a plain install would resolve to (None: unknown). Pure: tested by
    forcing each case."""
    if want not in CHOICES:
        raise ValueError(f"FORESIGHT_TORCH must be one of {', '.join(CHOICES)}, got {want!r}")
    if want == "cuda" or (want == "auto" and gpu):
        if system != "Linux":
            raise ValueError(f"a CUDA build through this script is for Linux; on {system} install torch for your GPU "
                             f"first (https://pytorch.org/get-started/locally/), then run setup again")
        why = ("asked for the CUDA build" if want == "cuda"
               else "nvidia-smi lists a GPU (FORESIGHT_TORCH=cpu for the CPU build)")
        return Choice("cuda", (TORCH,), f"{why}: PyPI's CUDA build of {TORCH}, {SIZES['cuda']}")
    why = "asked for the CPU build" if want == "cpu" else "no GPU found (FORESIGHT_TORCH=cuda for the CUDA build)"
    if system != "Linux":
        return Choice("cpu", (TORCH,), f"{why}: PyPI's {system} wheel of {TORCH} is the CPU build, {SIZES['cpu']}")
    if plain is not None and plain.endswith("+cpu"):
        return Choice("cpu", (TORCH,), f"{why}: pip's configured sources hold the CPU build ({plain}), "
                                       f"{SIZES['cpu']}")
    return Choice("cpu", (TORCH, "--index-url", CPU_INDEX),
                  f"{why}: the CPU build of {TORCH} from PyTorch's CPU index, {SIZES['cpu']}")


def choose(want: str, python: str) -> Choice:
    """``decide`` with what this machine says (GPU: ``nvidia-smi``; plain install: pip's dry run)."""
    gpu = gpu_present() if want == "auto" else False
    cuda = want == "cuda" or (want == "auto" and gpu)
    plain = None if cuda or platform.system() != "Linux" else plain_version(python)
    return decide(want, system=platform.system(), gpu=gpu, plain=plain)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print the pip arguments that install the right PyTorch build.")
    ap.add_argument("--python", default=sys.executable, help="the interpreter whose pip is asked (default: this)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--cpu", dest="want", action="store_const", const="cpu", help="the CPU build")
    group.add_argument("--cuda", dest="want", action="store_const", const="cuda", help="the CUDA build")
    args = ap.parse_args(argv)
    want = args.want or os.environ.get("FORESIGHT_TORCH", "").strip().lower() or "auto"
    try:
        choice = choose(want, args.python)
    except ValueError as e:
        print(f"setup: error: {e}", file=sys.stderr)
        return 2
    print(f"setup: PyTorch, {choice.build} build: {choice.why}", file=sys.stderr)
    print(" ".join(choice.pip_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
