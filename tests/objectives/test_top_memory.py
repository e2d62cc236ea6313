"""Peak memory of TOP's forward + backward vs plain next-token cross-entropy at N = 8192, V = 32000, W = 4096.

The sparse TOP loss never builds an N x V target and only holds a chunk of logits at a time, so it must not
cost more than the NTP cross-entropy of the same shape (which materialises the N x V logits). Each side runs
in a fresh subprocess; the cost is ru_maxrss after forward + backward minus ru_maxrss once inputs exist.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = r"""
import resource, sys
import torch
import torch.nn.functional as F
from foresight.objectives import top_loss

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

mode = sys.argv[1]
torch.manual_seed(0)
B, T, D, V, W = 2, 4096, 256, 32000, 4096
hidden = torch.randn(B, T, D).requires_grad_(True)
weight = (torch.randn(V, D) * 0.02).requires_grad_(True)
tokens = torch.randint(0, V, (B, T + 128))
torch.randn(8, 8) @ torch.randn(8, 8)  # touch the matmul backend before the baseline
base = rss_mib()
if mode == "ntp":
    loss = F.cross_entropy((hidden @ weight.T).reshape(-1, V), tokens[:, 1 : T + 1].reshape(-1))
else:
    loss = top_loss(hidden, weight, tokens, W)
loss.backward()
assert torch.isfinite(loss) and hidden.grad is not None and weight.grad is not None
print(f"{base:.1f} {rss_mib():.1f}")
"""


def _peak_mib(mode: str) -> float:
    res = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    base, peak = map(float, res.stdout.split()[-2:])
    return peak - base


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_top_peak_memory_not_above_ntp_cross_entropy():
    ntp = _peak_mib("ntp")
    top = _peak_mib("top")
    assert ntp > 500, f"NTP baseline suspiciously small ({ntp:.0f} MiB): the measurement is broken"
    assert top <= 1.15 * ntp, f"TOP fwd+bwd peak {top:.0f} MiB > 1.15 x NTP cross-entropy peak {ntp:.0f} MiB"
    print(f"peak over inputs: TOP {top:.0f} MiB, NTP {ntp:.0f} MiB")
