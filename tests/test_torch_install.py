"""Which PyTorch build ``scripts/setup`` installs (``scripts/torch_install.py``), each path forced: no GPU, a GPU
present, the CUDA build asked for, a CPU wheel in pip's configured sources (as on this project's machines) or not.
Nothing is downloaded: ``scripts/setup --dry-run`` prints the pip command, and pip is pointed at a folder holding a
stand-in wheel (metadata only) with every configuration file and index switched off."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("torch_install", ROOT / "scripts" / "torch_install.py")
ti = sys.modules["torch_install"] = importlib.util.module_from_spec(_spec)  # (dataclasses look the module up)
_spec.loader.exec_module(ti)

PLAIN = ("torch==2.13.0",)
CPU_INDEX = ("torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu")


@pytest.mark.parametrize("want, system, gpu, plain, build, args", [
    ("auto", "Linux", False, "2.13.0+cpu", "cpu", PLAIN),  # this project's machines and CI: the local CPU wheel
    ("auto", "Linux", False, "2.13.0", "cpu", CPU_INDEX),  # an ordinary machine: PyPI's wheel is the CUDA build
    ("auto", "Linux", False, None, "cpu", CPU_INDEX),  # pip could not say: never risk the CUDA download
    ("auto", "Linux", True, None, "cuda", PLAIN),  # a GPU is present
    ("cuda", "Linux", False, "2.13.0+cpu", "cuda", PLAIN),  # asked for
    ("cpu", "Linux", True, "2.13.0", "cpu", CPU_INDEX),  # asked for, despite the GPU
    ("auto", "Darwin", False, None, "cpu", PLAIN),  # PyPI's macOS and Windows wheels are CPU builds
    ("auto", "Windows", False, None, "cpu", PLAIN),
])
def test_the_build_and_pip_command_for_each_case(want, system, gpu, plain, build, args):
    choice = ti.decide(want, system=system, gpu=gpu, plain=plain)
    assert (choice.build, choice.pip_args) == (build, args)
    assert ("190 MB" if build == "cpu" else "3 GB") in choice.why  # the download size is said before it starts


def test_impossible_requests_are_one_line():
    with pytest.raises(ValueError, match="FORESIGHT_TORCH must be one of auto, cpu, cuda, got 'gpu'"):
        ti.decide("gpu", system="Linux", gpu=False, plain=None)
    with pytest.raises(ValueError, match="for Linux"):
        ti.decide("cuda", system="Darwin", gpu=False, plain=None)


def _fake_nvidia_smi(folder: Path, gpu: bool) -> Path:
    """An ``nvidia-smi`` that lists one GPU, or fails as it does when the driver is not loaded."""
    folder.mkdir(exist_ok=True)
    body = ('echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"' if gpu
            else 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9')
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return folder


def test_gpu_detection(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path / "gpu", gpu=True)))
    assert ti.gpu_present()
    monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path / "broken", gpu=False)))
    assert not ti.gpu_present()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert not ti.gpu_present()


def _stand_in_wheel(folder: Path) -> None:
    """A wheel named and described as torch 2.13.0+cpu (metadata only: pip's dry run reads nothing else)."""
    folder.mkdir()
    info = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(folder / "torch-2.13.0+cpu-py3-none-any.whl", "w") as z:
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


def _setup_dry_run(tmp_path, gpu: bool, wheels: Path, *args, **env) -> subprocess.CompletedProcess:
    """``scripts/setup --dry-run`` with a stand-in nvidia-smi and pip reading only ``wheels`` (no index, no
    configuration file: hermetic on any machine)."""
    path = f"{_fake_nvidia_smi(tmp_path / ('gpu' if gpu else 'nogpu'), gpu)}{os.pathsep}{os.environ['PATH']}"
    full = {k: v for k, v in os.environ.items() if k != "FORESIGHT_TORCH"}
    full.update(PATH=path, PYTHON=sys.executable, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
                PIP_FIND_LINKS=str(wheels), **env)
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup"), "--dry-run", *args], capture_output=True,
                          text=True, env=full, timeout=300)


@pytest.mark.slow  # (four pip dry runs: about 2 s each on a busy 2-core machine)
def test_setup_dry_run_prints_the_command_for_each_path(tmp_path):
    had_venv = (ROOT / ".venv").exists()
    local, empty = tmp_path / "local", tmp_path / "empty"
    _stand_in_wheel(local)
    empty.mkdir()
    cases = [  # (GPU present, pip's sources, setup's arguments, environment) -> the command and build
        (False, local, (), {}, "install torch==2.13.0", "cpu build"),
        (False, empty, (), {}, "install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu", "cpu build"),
        (True, local, (), {}, "install torch==2.13.0", "cuda build"),
        (False, local, ("--cuda",), {}, "install torch==2.13.0", "cuda build"),
        (True, empty, (), {"FORESIGHT_TORCH": "cpu"}, "--index-url https://download.pytorch.org/whl/cpu", "cpu build"),
    ]
    for gpu, wheels, args, env, command, build in cases:
        out = _setup_dry_run(tmp_path, gpu, wheels, *args, **env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(command) and build in out.stderr, (gpu, wheels, args, env, out)
        assert command.endswith("whl/cpu") or "--index-url" not in out.stdout
    out = _setup_dry_run(tmp_path, False, local, FORESIGHT_TORCH="gpu")
    assert out.returncode == 2 and "FORESIGHT_TORCH must be one of" in out.stderr
    assert had_venv or not (ROOT / ".venv").exists()  # a dry run installs nothing, not even the venv
