"""Loss-layer ops. Each public function here has a pure-PyTorch implementation (CPU path, ground truth)
and takes ``impl="auto" | "torch" | "triton"``; the Triton kernels live in ``ops/kernels/``."""

from foresight.ops.soft_ce import linear_cross_entropy, linear_soft_cross_entropy

__all__ = ["linear_cross_entropy", "linear_soft_cross_entropy"]
