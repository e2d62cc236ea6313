"""Logit soft-capping in the chunked loss layer (Gemma 2) against dense PyTorch on capped logits."""

import pytest
import torch
import torch.nn.functional as F

from foresight.errors import ForesightError
from foresight.ops import linear_cross_entropy, linear_soft_cross_entropy


def test_softcap_soft_targets_match_dense_reference():
    torch.manual_seed(0)
    n, d, v, k, cap = 13, 7, 29, 5, 0.8  # a small cap so tanh saturates and the chain rule matters
    h = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, v, (n, k))
    q = torch.rand(n, k, dtype=torch.float64)
    got = linear_soft_cross_entropy(h, w, ids, q, chunk_rows=4, softcap=cap)
    gh, gw = torch.autograd.grad(got.sum(), (h, w))

    z = cap * torch.tanh(h @ w.T / cap)  # (N, V)
    want = torch.logsumexp(z, -1) - (q * z.gather(1, ids)).sum(-1)
    rh, rw = torch.autograd.grad(want.sum(), (h, w))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, rh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)


def test_softcap_cross_entropy_with_ignored_rows():
    torch.manual_seed(1)
    h = torch.randn(11, 6, requires_grad=True)
    w = torch.randn(17, 6)
    labels = torch.randint(0, 17, (11,))
    labels[[2, 7]] = -100
    got = linear_cross_entropy(h, w, labels, softcap=2.5, chunk_rows=3)
    want = F.cross_entropy(2.5 * torch.tanh(h @ w.T / 2.5), labels, reduction="none")  # 0 on ignored rows
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got.sum().backward()
    assert h.grad[2].abs().max() == 0 and h.grad[0].abs().max() > 0


def test_softcap_refuses_triton():
    with pytest.raises(ForesightError, match="soft-capping"):
        linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1]), softcap=1.0, impl="triton")
