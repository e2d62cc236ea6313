"""benchmarks/gemv_floor.py: each kernel computes the same one-row product, the byte counts, and the report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _gemv_floor():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__("gemv_floor")
    finally:
        sys.path.pop(0)


def test_copies_leave_the_cache():
    g = _gemv_floor()
    assert g.copies_for(576, 576, 32) * 576 * 576 * 4 >= 4 * 32 * 2**20  # 4x a 32 MiB cache
    assert g.copies_for(49152, 576, 1) == 2  # at least two copies even when one exceeds the cache


@pytest.mark.parametrize("kernel", ["mkl", "mv", "onednn", "onednn-bf16"])
def test_every_kernel_computes_the_product_and_counts_its_bytes(kernel):
    g = _gemv_floor()
    if kernel.startswith("onednn") and not g.mkldnn_linear_available():
        pytest.skip("no oneDNN in this PyTorch build")
    torch.manual_seed(0)
    weights = [torch.randn(7, 13) for _ in range(3)]  # odd shapes
    fn, nbytes = g.kernel_fn(kernel, weights)
    element = 2 if kernel == "onednn-bf16" else 4
    assert nbytes == 3 * 7 * 13 * element
    torch.manual_seed(0)  # kernel_fn draws x after the weights: redraw the same x for the reference
    [torch.randn(7, 13) for _ in range(3)]
    x = torch.randn(1, 13)
    for w, y in zip(weights, fn()):
        ref = (w.double() @ x[0].double()).float()
        tol = 5e-2 if kernel == "onednn-bf16" else 1e-5
        torch.testing.assert_close(y.reshape(-1).float(), ref, rtol=tol, atol=tol)


def test_report_names_every_shape_and_the_step_against_the_floor():
    g = _gemv_floor()
    rates = {(1, s, k): 10.0 if k != "sum" else 20.0 for s in g.SHAPES for k in g.KERNELS}
    text = g.report(rates, {1: 60.0}, [1], ["--threads", "1"])
    for shape in g.SHAPES:
        assert f"| {shape} | 20.0 | 10.0 |" in text and text.count(f"| {shape} |") == 1
    # the floor at 20 GB/s and the Linears at 10 GB/s: 538 MB -> 26.9 ms and 53.8 ms
    assert "sum 26.9 ms, mkl 53.8 ms" in text and "= 2.23x the streaming floor, 1.12x its Linears" in text


@pytest.mark.parametrize("argv, message", [(["--threads", "one"], "--threads: comma-separated whole numbers"),
                                           (["--rounds", "0"], "must be at least 1")])
def test_bad_flags_are_one_line(argv, message):
    g = _gemv_floor()
    with pytest.raises(g.ForesightError, match=message):
        g.main(argv)
