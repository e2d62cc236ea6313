"""linear_soft_cross_entropy / linear_cross_entropy against a dense reference written here.

Reference: z = h @ W.T (fp64), loss_t = logsumexp(z_t) - sum_k w[t, k] * z_t[ids[t, k]].
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foresight.ops import linear_cross_entropy, linear_soft_cross_entropy

N, D, V, K = 33, 13, 37, 5  # odd shapes


def dense_soft_ce(hidden, weight, ids, weights):
    """Literal definition, in fp64."""
    z = hidden.double() @ weight.double().T  # (N, V)
    lse = torch.logsumexp(z, dim=-1)
    picked = torch.stack([z[i, ids[i]] for i in range(z.shape[0])])  # (N, K), duplicate ids allowed
    return lse - (weights.double() * picked).sum(-1)


def make_inputs(seed=0, n=N, d=D, v=V, k=K, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    weight = (torch.randn(v, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    ids = torch.randint(0, v, (n, k), generator=g)
    ids[:, 1] = ids[:, 0]  # a duplicated id in every row
    weights = torch.rand(n, k, generator=g, dtype=torch.float64)
    weights[::3] /= weights[::3].sum(-1, keepdim=True)  # some rows a distribution, others not
    weights[1, :] = 0.0  # a row with no target mass
    return hidden, weight, ids, weights.to(dtype)


def grads(loss_vec, upstream, hidden, weight):
    return torch.autograd.grad((loss_vec * upstream).sum(), (hidden, weight))


@pytest.mark.parametrize("chunk_rows", [1, 4, 7, None, 10_000])
def test_soft_ce_values_and_grads_match_dense(chunk_rows):
    hidden, weight, ids, weights = make_inputs()
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    upstream = torch.randn(N, generator=torch.Generator().manual_seed(1))  # non-uniform dL/dloss_t

    got = linear_soft_cross_entropy(hidden, weight, ids, weights, chunk_rows=chunk_rows)
    assert got.shape == (N,) and got.dtype == torch.float32
    gh, gw = grads(got, upstream, hidden, weight)

    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref = dense_soft_ce(h64, w64, ids, weights)
    rh, rw = grads(ref, upstream.double(), h64, w64)

    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh.double(), rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-6)


def test_soft_ce_chunking_does_not_change_results():
    hidden, weight, ids, weights = make_inputs(seed=3)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    upstream = torch.randn(N, generator=torch.Generator().manual_seed(4))
    results = []
    for chunk_rows in (1, 4, None):
        loss = linear_soft_cross_entropy(hidden, weight, ids, weights, chunk_rows=chunk_rows)
        results.append((loss, *grads(loss, upstream, hidden, weight)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            # same math, different summation order of the weight gradient over chunks
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_soft_ce_grad_of_one_input_only():
    """The backward skips the gradient nobody asked for; the other one is still right."""
    hidden, weight, ids, weights = make_inputs(seed=5)
    upstream = torch.randn(N, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for which in ("hidden", "weight"):
        h = hidden.clone().requires_grad_(which == "hidden")
        w = weight.clone().requires_grad_(which == "weight")
        x = h if which == "hidden" else w
        (g,) = torch.autograd.grad((linear_soft_cross_entropy(h, w, ids, weights, chunk_rows=4) * upstream).sum(), x)
        x64 = x.detach().double().requires_grad_(True)
        args = (x64, weight) if which == "hidden" else (hidden, x64)
        (r,) = torch.autograd.grad((dense_soft_ce(*args, ids, weights) * upstream).sum(), x64)
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-6)


def test_soft_ce_large_logits_are_stable():
    """logsumexp must be computed stably: logits of size ~100 would overflow a naive exp-sum."""
    hidden, weight, ids, weights = make_inputs(seed=7, scale=4.0)
    hidden.requires_grad_(True)
    got = linear_soft_cross_entropy(hidden, weight, ids, weights, chunk_rows=4)
    (gh,) = torch.autograd.grad(got.sum(), hidden)
    h64 = hidden.detach().double().requires_grad_(True)
    ref = dense_soft_ce(h64, weight, ids, weights)
    (rh,) = torch.autograd.grad(ref.sum(), h64)
    assert ref.abs().max() > 50  # the test really exercises large logits
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh.double(), rh, rtol=1e-5, atol=1e-4)


def test_soft_ce_gradcheck_float64():
    """gradcheck on a tiny shape: fp64 inputs are computed in fp64, so default gradcheck tolerances hold."""
    hidden, weight, ids, weights = make_inputs(seed=8, n=4, d=3, v=6, k=3, dtype=torch.float64, scale=0.5)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    fn = lambda h, w: linear_soft_cross_entropy(h, w, ids, weights, chunk_rows=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_soft_ce_shape_errors():
    hidden, weight, ids, weights = make_inputs()
    with pytest.raises(ValueError):
        linear_soft_cross_entropy(hidden[:, :-1], weight, ids, weights)
    with pytest.raises(ValueError):
        linear_soft_cross_entropy(hidden, weight, ids[:, :-1], weights)
    with pytest.raises(ValueError):
        linear_soft_cross_entropy(hidden[:-1], weight, ids, weights)


@pytest.mark.parametrize("ignore_index", [-100, 3])
@pytest.mark.parametrize("chunk_rows", [1, 4, None])
def test_linear_cross_entropy_matches_torch(ignore_index, chunk_rows):
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(N, D, generator=g, requires_grad=True)
    weight = torch.randn(V, D, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[0, 5, 6, 20, N - 1]] = ignore_index
    upstream = torch.randn(N, generator=g)

    got = linear_cross_entropy(hidden, weight, labels, ignore_index=ignore_index, chunk_rows=chunk_rows)
    gh, gw = grads(got, upstream, hidden, weight)

    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref = F.cross_entropy(h64 @ w64.T, labels, ignore_index=ignore_index, reduction="none")
    rh, rw = grads(ref, upstream.double(), h64, w64)

    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh.double(), rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-6)
    ignored = labels == ignore_index
    assert torch.all(got[ignored] == 0)
    assert torch.all(gh[ignored] == 0)
    assert torch.all(gh[~ignored].abs().sum(-1) > 0)


def test_linear_cross_entropy_all_ignored():
    hidden = torch.randn(5, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    labels = torch.full((5,), -100)
    loss = linear_cross_entropy(hidden, weight, labels)
    gh, gw = torch.autograd.grad(loss.sum(), (hidden, weight))
    assert torch.all(loss == 0) and torch.all(gh == 0) and torch.all(gw == 0)


def test_soft_ce_bf16_inputs_give_fp32_loss():
    hidden, weight, ids, weights = make_inputs(seed=12)
    hb, wb = hidden.bfloat16(), weight.bfloat16()
    got = linear_soft_cross_entropy(hb, wb, ids, weights)
    assert got.dtype == torch.float32
    ref = dense_soft_ce(hb.double(), wb.double(), ids, weights)  # same bf16-rounded inputs
    torch.testing.assert_close(got.double(), ref, rtol=1e-2, atol=5e-2)
