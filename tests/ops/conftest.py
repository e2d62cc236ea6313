"""Fixtures of the kernel tests."""

import pytest
import torch


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Kernels launched in a test run in Triton's interpreter when there is no GPU (use with pytestmark)."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
