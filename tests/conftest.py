"""Fixtures shared by every test folder."""

import sys
from pathlib import Path

import pytest
import torch

# The benchmarks' own helpers (benchmarks/: distill, cached_heads, next_line, smollm2) are imported by bare name, as
# the benchmark scripts themselves import them; appended, so nothing of the tests' own is shadowed.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine (use with pytestmark)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
