"""``eval_mode``: a module in eval mode for the length of a block, every submodule's own mode restored after."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluation, greedy decoding and validation run inside ``with eval_mode(model):``. On exit (an exception
    included) each submodule gets back the mode it had, so a caller's mix (e.g. a frozen part kept in eval) is
    left as it was, not flattened to one ``train(was_training)``."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode
