"""The Triton path of linear_soft_cross_entropy against the PyTorch twin (issue #4).

Without CUDA the kernels run in Triton's interpreter with tiny tiles, so that every loop, slab and chunk
boundary is crossed on shapes of a few dozen columns; with CUDA the same tests run compiled kernels.
TRITON_INTERPRET=1 must be set before ``triton.language`` is imported (its own helpers, tl.max, tl.sum, ...
are decorated then), so this module sets it for that import; if another module imported Triton first, one
test re-runs this file in a fresh interpreter. Compiling for sm_90 needs the opposite mode, so that check
runs in a subprocess. The GPU test (``-m gpu``) compares errors against an fp64 truth, Cut-CE style.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import import_triton, run_interpreted

ON_GPU = torch.cuda.is_available()
triton, RUNNABLE = import_triton(interpret=not ON_GPU)
if triton is None:
    pytest.skip("triton is not installed (pip install 'triton>=3.0', Linux)", allow_module_level=True)
pytestmark = pytest.mark.usefixtures("triton_interpreter")

from foresight.ops import linear_cross_entropy, linear_soft_cross_entropy  # noqa: E402
from foresight.ops.kernels import soft_ce_triton  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
runnable = pytest.mark.skipif(not RUNNABLE, reason="triton.language was imported before TRITON_INTERPRET=1 "
                              "was set; test_in_fresh_interpreter runs these tests")

# Chunking configurations: tiny tiles, slabs and chunks (every boundary crossed, fp32 dW accumulator for
# half inputs); the same with a workspace too small for that accumulator (dW summed in place); defaults.
TINY = dict(block_v=16, slab_cols=16, rows=3, block_j=2)
TINY_INPLACE = dict(TINY, workspace_mib=1e-4)
DEFAULT: dict = {}
CONFIGS = {"tiny": TINY, "tiny_inplace_dw": TINY_INPLACE, "default": DEFAULT}


def test_in_fresh_interpreter():
    if RUNNABLE:
        pytest.skip("the tests of this file run in this process")
    run_interpreted(__file__)


def kernel_config(**knobs) -> "soft_ce_triton.KernelConfig":
    return soft_ce_triton.KernelConfig(**knobs)


def make_inputs(n, d, v, k, *, seed=0, dtype=torch.float32, scale=1.0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    weight = (torch.randn(v, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    ids = torch.randint(0, v, (n, k), generator=g)
    weights = torch.rand(n, k, generator=g)
    if k >= 2:
        ids[:, 1] = ids[:, 0]  # a repeated id in every row
        weights[::2, -1] = 0.0  # weight-0 slots
    weights[n // 2] = 0.0  # a row with no target mass
    weights[::3] /= weights[::3].sum(-1, keepdim=True).clamp(min=1e-6)  # some rows a distribution
    upstream = torch.randn(n, generator=g)  # non-uniform dL/dloss_t
    to = lambda t: t.to(device)  # noqa: E731
    return to(hidden), to(weight), to(ids), to(weights), to(upstream)


def loss_and_grads(impl, hidden, weight, ids, weights, upstream, **kw):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    loss = linear_soft_cross_entropy(h, w, ids, weights, impl=impl, **kw)
    gh, gw = torch.autograd.grad((loss * upstream).sum(), (h, w))
    return loss, gh, gw


@runnable
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("n,d,v,k", [(7, 16, 37, 1), (7, 32, 100, 3), (7, 16, 37, 5), (1, 16, 37, 3)])
def test_matches_twin_fp32(config, n, d, v, k):
    inputs = make_inputs(n, d, v, k, seed=n + d + v + k)
    got = loss_and_grads("triton", *inputs, kernel=kernel_config(**config))
    ref = loss_and_grads("torch", *inputs)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@runnable
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_matches_twin_bf16(config):
    """Same bf16 logits, fp32 reductions: the loss agrees to fp32 rounding; the gradients to about one bf16
    ulp (their partial sums are rounded in a different order)."""
    inputs = make_inputs(7, 32, 100, 5, seed=2, dtype=torch.bfloat16)
    got = loss_and_grads("triton", *inputs, kernel=kernel_config(**config))
    ref = loss_and_grads("torch", *inputs)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1:], ref[1:]):
        assert a.dtype == torch.bfloat16
        scale = b.float().abs().max()
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=float(scale) * 2**-6)


@runnable
def test_large_logits_are_stable():
    inputs = make_inputs(7, 16, 37, 3, seed=5, scale=4.0)  # logits of size ~100
    got = loss_and_grads("triton", *inputs, kernel=kernel_config(**TINY))
    ref = loss_and_grads("torch", *inputs)
    assert ref[0].abs().max() > 50
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@runnable
def test_chunk_rows_and_grad_of_one_input():
    kernel = kernel_config(**dict(TINY, rows=None))
    hidden, weight, ids, weights, upstream = make_inputs(7, 16, 37, 3, seed=6)
    ref = loss_and_grads("torch", hidden, weight, ids, weights, upstream)
    got = loss_and_grads("triton", hidden, weight, ids, weights, upstream, chunk_rows=2, kernel=kernel)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    h = hidden.clone().requires_grad_(True)  # weight needs no gradient: the backward skips dW
    loss = linear_soft_cross_entropy(h, weight, ids, weights, impl="triton", kernel=kernel)
    (gh,) = torch.autograd.grad((loss * upstream).sum(), h)
    torch.testing.assert_close(gh, ref[1], rtol=1e-5, atol=1e-5)
    w = weight.clone().requires_grad_(True)
    loss = linear_soft_cross_entropy(hidden, w, ids, weights, impl="triton", kernel=kernel)
    (gw,) = torch.autograd.grad((loss * upstream).sum(), w)
    torch.testing.assert_close(gw, ref[2], rtol=1e-5, atol=1e-5)


@runnable
def test_linear_cross_entropy_with_ignored_rows():
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(9, 16, generator=g).to(DEVICE)
    weight = torch.randn(37, 16, generator=g).to(DEVICE)
    labels = torch.randint(0, 37, (9,), generator=g).to(DEVICE)
    labels[[0, 4, 8]] = -100
    results = []
    for impl in ("triton", "torch"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss = linear_cross_entropy(h, w, labels, impl=impl, kernel=kernel_config(**TINY))
        results.append((loss, *torch.autograd.grad(loss.sum(), (h, w))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.all(results[0][0][labels == -100] == 0) and torch.all(results[0][1][labels == -100] == 0)


@runnable
@pytest.mark.parametrize("config", [TINY, DEFAULT], ids=["tiny", "default"])
def test_autocast_fp32_inputs_match_twin(config):
    """fp32 hidden and head under bf16 autocast (the trainer on CUDA): bf16 matmuls in both passes, fp32
    gradients summed in fp32 straight into the outputs."""
    hidden, weight, ids, weights, upstream = make_inputs(7, 32, 100, 5, seed=9)
    results = []
    for impl in ("triton", "torch"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = linear_soft_cross_entropy(h, w, ids, weights, impl=impl, kernel=kernel_config(**config))
        results.append((loss, *torch.autograd.grad((loss * upstream).sum(), (h, w))))
    (loss, gh, gw), (rloss, rh, rw) = results
    assert gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(loss, rloss, rtol=1e-5, atol=1e-5)
    for a, b in ((gh, rh), (gw, rw)):  # bf16 partial products summed in another order
        torch.testing.assert_close(a, b, rtol=0, atol=float(b.abs().max()) * 2**-7)


def test_chunking_comes_from_the_config():
    """The chunk rows and slab width follow the KernelConfig passed with the call (tests rely on it)."""
    tiny = kernel_config(**TINY)
    assert soft_ce_triton._forward_rows(100, 37, 4, None, tiny) == 3
    assert soft_ce_triton._forward_rows(1000, 1000, 4, None, kernel_config(workspace_mib=1.0)) == 256  # 1 MiB / 4 kB
    plan = soft_ce_triton._backward_plan(100, 37, 16, 2, True, False, False, None, tiny)
    assert (plan.rows, plan.cols, plan.dh_buffer, plan.dw_buffer) == (3, 16, True, True)
    plan = soft_ce_triton._backward_plan(100, 37, 16, 2, True, False, False, None, kernel_config(**TINY_INPLACE))
    assert not plan.dw_buffer  # the V×D fp32 buffer does not fit a 100-byte workspace


@runnable
def test_shape_and_dtype_errors():
    hidden, weight, ids, weights, _ = make_inputs(7, 16, 37, 3)
    with pytest.raises(ValueError, match="share a dtype"):
        linear_soft_cross_entropy(hidden, weight.bfloat16(), ids, weights, impl="triton")
    with pytest.raises(ValueError):
        linear_soft_cross_entropy(hidden, weight, ids[:, :2], weights, impl="triton")


# ----------------------------------------------------------------------------- compiled code, no GPU needed
COMPILE_CHECK = """
import re
from foresight.ops.kernels.soft_ce_triton import compile_for_gpu
for dtype in ("bf16", "fp32"):
    for k in (1, 128):
        ptx = compile_for_gpu(90, dtype, v=32000, k=k)
        grad = ptx["softmax_grad_kernel"]
        # target reads, barrier, dense stores, barrier, target stores
        first_bar, last_bar = grad.index("bar.sync"), grad.rindex("bar.sync")
        assert grad.index("st.global") > first_bar and grad.rindex("st.global") > last_bar, "barriers misplaced"
        assert "ld.global.v4" in grad, "dense loads not vectorised"
print("compiled")
"""


def test_kernels_compile_for_sm90(tmp_path):
    """Ahead-of-time compile to sm_90 (the H200), in a process without TRITON_INTERPRET: catches what the
    interpreter accepts but the compiler rejects, and checks the barriers of the in-place backward."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", COMPILE_CHECK], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ GPU
def errors_vs_fp64(impl, hidden, weight, ids, weights, upstream):
    """Max abs errors of loss, dH, dW against the fp64 twin on the same (rounded) inputs, each divided by
    the truth's max abs value."""
    got = loss_and_grads(impl, hidden, weight, ids, weights, upstream)
    truth = loss_and_grads("torch", hidden.double(), weight.double(), ids, weights.double(), upstream.double())
    return [float((a.double() - t).abs().max() / t.abs().max()) for a, t in zip(got, truth)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,margin", [(torch.float32, 5e-4), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("n,d,v,k", [(8192, 1024, 32000, 128), (1536, 512, 50257, 1), (1000, 256, 4099, 7)])
def test_gpu_error_no_worse_than_twin(dtype, margin, n, d, v, k):
    """Error vs fp64 truth ≤ the same-dtype twin's error + a dtype margin (5e-4 fp32, 1e-2 bf16), on TOP-like
    targets (K = 128, weights ∝ exp(−slot)) and NTP (K = 1), with the default chunking: at N = 8192,
    D = 1024, V = 32000 in bf16 that is 3 row chunks × 8 vocab slabs, dW summed in place in bf16."""
    hidden, weight, ids, weights, upstream = make_inputs(n, d, v, k, seed=n, dtype=dtype, scale=0.5, device="cuda")
    if k == 128:
        weights = torch.softmax(-torch.arange(k, device="cuda", dtype=torch.float32), 0).expand(n, k).contiguous()
    ours = errors_vs_fp64("triton", hidden, weight, ids, weights, upstream)
    twin = errors_vs_fp64("torch", hidden, weight, ids, weights, upstream)
    for name, e_ours, e_twin in zip(("loss", "dH", "dW"), ours, twin):
        assert e_ours <= e_twin + margin, f"{name}: triton {e_ours:.2e} vs twin {e_twin:.2e}"
