"""impl= dispatch of the loss-layer ops (issue #4), autocast handling, and import hygiene; no Triton needed."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from foresight.errors import ForesightError
from foresight.ops import kernels, linear_cross_entropy, linear_soft_cross_entropy
from foresight.ops.kernels import resolve_impl


def make_inputs(n=9, d=8, v=21, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, requires_grad=True)
    weight = torch.randn(v, d, generator=g, requires_grad=True)
    ids = torch.randint(0, v, (n, k), generator=g)
    weights = torch.rand(n, k, generator=g)
    return hidden, weight, ids, weights


def fake(device: str, dtype=torch.bfloat16):
    """Stands in for a tensor in resolve_impl, which reads only .device and .dtype (no CUDA needed)."""
    return SimpleNamespace(device=torch.device(device), dtype=dtype)


@pytest.fixture(autouse=True)
def hopper(monkeypatch):
    """resolve_impl asks fake CUDA devices their compute capability: an H200 answers (9, 0)."""
    monkeypatch.setattr(kernels, "cuda_capability", lambda device: (9, 0))


@pytest.fixture
def triton_importable(monkeypatch):
    monkeypatch.setattr(kernels, "_import_error", None)
    monkeypatch.setattr(kernels, "_imported", True)


@pytest.fixture
def triton_missing(monkeypatch):
    monkeypatch.setattr(kernels, "_import_error", "triton cannot be imported (ModuleNotFoundError: simulated)")
    monkeypatch.setattr(kernels, "_imported", False)


def test_unknown_impl_is_rejected():
    hidden, weight, ids, weights = make_inputs()
    with pytest.raises(ValueError, match="impl must be one of"):
        linear_soft_cross_entropy(hidden, weight, ids, weights, impl="cuda")


def test_auto_on_cpu_is_the_torch_twin():
    hidden, weight, ids, weights = make_inputs()
    a = linear_soft_cross_entropy(hidden, weight, ids, weights, impl="auto")
    b = linear_soft_cross_entropy(hidden, weight, ids, weights, impl="torch")
    assert torch.equal(a, b)
    labels = ids[:, 0]
    assert torch.equal(linear_cross_entropy(hidden, weight, labels),
                       linear_cross_entropy(hidden, weight, labels, impl="torch"))


def test_auto_picks_triton_only_on_cuda_with_triton(monkeypatch, triton_importable):
    assert resolve_impl("auto", fake("cuda"), fake("cuda")) == "triton"
    assert resolve_impl("auto", fake("cuda", torch.float32), fake("cuda", torch.float32)) == "triton"
    assert resolve_impl("auto", fake("cuda", torch.float64), fake("cuda", torch.float64)) == "torch"  # fp64: the twin
    assert resolve_impl("auto", fake("cpu"), fake("cpu")) == "torch"
    assert resolve_impl("torch", fake("cuda"), fake("cuda")) == "torch"
    monkeypatch.setattr(kernels, "cuda_capability", lambda device: (7, 5))  # Turing: no bf16 kernels
    assert resolve_impl("auto", fake("cuda"), fake("cuda")) == "torch"
    with pytest.raises(ForesightError, match="capability 8.0"):
        resolve_impl("triton", fake("cuda"), fake("cuda"))


def test_auto_without_triton_uses_torch(triton_missing):
    assert resolve_impl("auto", fake("cuda"), fake("cuda")) == "torch"
    hidden, weight, ids, weights = make_inputs()
    loss = linear_soft_cross_entropy(hidden, weight, ids, weights)  # the package works without Triton
    loss.sum().backward()
    assert hidden.grad is not None


def test_explicit_triton_that_cannot_run_fails_loudly(monkeypatch, triton_missing):
    with pytest.raises(ForesightError, match="cannot be imported"):
        resolve_impl("triton", fake("cuda"), fake("cuda"))
    monkeypatch.setattr(kernels, "_import_error", None)
    monkeypatch.setattr(kernels, "_imported", True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ForesightError, match="TRITON_INTERPRET=1"):
        resolve_impl("triton", fake("cpu"), fake("cpu"))
    with pytest.raises(ForesightError, match="float64"):
        resolve_impl("triton", fake("cuda", torch.float64), fake("cuda", torch.float64))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("triton", fake("cpu"), fake("cpu")) == "triton"


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch):
    """The real call, whether or not Triton is installed here: either reason is a ForesightError."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, ids, weights = make_inputs()
    with pytest.raises(ForesightError, match="impl='triton'"):
        linear_soft_cross_entropy(hidden, weight, ids, weights, impl="triton")
    with pytest.raises(ForesightError, match="impl='triton'"):
        linear_cross_entropy(hidden, weight, ids[:, 0], impl="triton")


def test_importing_the_package_does_not_import_triton():
    code = ("import sys, foresight, foresight.ops, foresight.objectives, foresight.model; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_autocast_forward_and_backward_see_the_same_logits():
    """Under autocast, fp32 inputs are computed in bf16 in the forward and in the recomputing backward alike
    (autocast alone would reach only the forward): the loss and dH equal those of bf16 inputs exactly; dW is
    summed in fp32 and returned in fp32, so it rounds to the bf16 run's dW."""
    hidden, weight, ids, weights = make_inputs(seed=3)
    upstream = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_soft_cross_entropy(hidden, weight, ids, weights, impl="torch", chunk_rows=4)
    gh, gw = torch.autograd.grad((loss * upstream).sum(), (hidden, weight))
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32

    hb = hidden.detach().bfloat16().requires_grad_(True)
    wb = weight.detach().bfloat16().requires_grad_(True)
    ref = linear_soft_cross_entropy(hb, wb, ids, weights, impl="torch", chunk_rows=4)
    rh, rw = torch.autograd.grad((ref * upstream).sum(), (hb, wb))
    assert torch.equal(loss, ref)
    assert torch.equal(gh, rh.float())
    assert torch.equal(gw.bfloat16(), rw)


def test_top_targets_dispatch(monkeypatch, triton_importable):
    """The TOP target kernel takes integer token streams: INDEX_DTYPES, not the loss kernels' float dtypes."""
    from foresight.objectives.top import top_targets

    assert resolve_impl("auto", fake("cuda", torch.int64), dtypes=kernels.INDEX_DTYPES) == "triton"
    assert resolve_impl("auto", fake("cuda", torch.int32), dtypes=kernels.INDEX_DTYPES) == "triton"
    assert resolve_impl("auto", fake("cuda", torch.int64)) == "torch"  # not a float: the loss kernels' check
    assert resolve_impl("auto", fake("cuda", torch.int16), dtypes=kernels.INDEX_DTYPES) == "torch"
    with pytest.raises(ForesightError, match="int32, int64 inputs, not torch.int16"):
        resolve_impl("triton", fake("cuda", torch.int16), dtypes=kernels.INDEX_DTYPES)
    tokens = torch.randint(0, 9, (2, 12))
    a, b = top_targets(tokens, 10, 5), top_targets(tokens, 10, 5, impl="torch")  # auto on the CPU: the twin
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ForesightError, match="impl='triton'.*TRITON_INTERPRET=1"):
        top_targets(tokens, 10, 5, impl="triton")
    with pytest.raises(ValueError, match="impl must be one of"):
        top_targets(tokens, 10, 5, impl="cuda")
    with pytest.raises(ValueError, match="horizon must have shape"):
        top_targets(tokens, 10, 5, horizon=torch.zeros(2, 11, dtype=torch.long))
