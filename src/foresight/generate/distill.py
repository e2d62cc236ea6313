"""Self-distillation data for drafting heads: the model's own greedy continuations of prompts.

Drafting heads are judged against the model's greedy choices, so the best training text is what the model
itself writes: on a greedy continuation, the token at t + 1 + k *is* the trunk's argmax given the tokens
before it, so the heads learn exactly the targets verification will check (Medusa-2 / EAGLE train on
self-distilled data for the same reason). Continuations are decoded in batches with the KV cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from foresight.generate.sampling import generate


def prompt_windows(tokens: np.ndarray, n: int, length: int, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``length`` tokens at random (seeded) starts of a token stream: (n, length) long."""
    g = np.random.default_rng(seed)
    starts = np.sort(g.choice(len(tokens) - length, size=n, replace=False))
    return torch.from_numpy(np.stack([tokens[s : s + length] for s in starts]).astype(np.int64))


@torch.no_grad()
def greedy_continuations(model, prompts: torch.Tensor, new_tokens: int, batch: int,
                         on_batch: Callable[[torch.Tensor, float], None] | None = None) -> torch.Tensor:
    """Prompts (N, P) -> (N, P + new_tokens): each row followed by the model's greedy continuation, decoded
    ``batch`` rows at a time (no eos stop: the text after an end token is the model's too).
    ``on_batch(rows_so_far, seconds)`` is called after every batch (for progress and partial saves)."""
    model.eval()
    done, t0 = [], time.perf_counter()
    for i in range(0, prompts.shape[0], batch):
        out = generate(model, prompts[i : i + batch], new_tokens)
        done.append(out)
        if on_batch is not None:
            on_batch(torch.cat(done), time.perf_counter() - t0)
    return torch.cat(done)


def save_tokens(tokens: torch.Tensor, path: Path) -> None:
    """(N, L) token ids -> ``path`` (.npy, written to a temporary name and renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, tokens.numpy().astype(np.int32))
    tmp.replace(path)
