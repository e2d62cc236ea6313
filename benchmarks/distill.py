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


def prompt_windows(tokens: np.ndarray, n: int, length: int, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``length`` tokens at random (seeded) starts of a token stream: (n, length) long."""
    g = np.random.default_rng(seed)
    starts = np.sort(g.choice(len(tokens) - length, size=n, replace=False))
    return torch.from_numpy(np.stack([tokens[s : s + length] for s in starts]).astype(np.int64))


@torch.no_grad()
def greedy_with_states(model, prompts: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, ...]:
    """Greedy continuation of ``prompts`` (B, P) with the KV cache, keeping the trunk's states on the way.

    Returns tokens (B, P + n) and the trunk's ``final`` and ``last_input`` at positions 0 .. P + n - 2 (every
    position whose next token is known): (B, P + n - 1, D) each. Decoding computes them anyway, so the heads'
    training cache costs no second trunk pass (a full forward would give the same values up to rounding:
    the incremental pass multiplies other shapes). Same tokens as ``generate(model, prompts, n)`` (no eos stop).
    """
    model.eval()
    caches = model.new_caches()
    out = model.trunk(prompts, caches)  # prefill: positions 0 .. P-1
    finals, lasts, tokens = [out.final], [out.last_input], [prompts]
    for i in range(new_tokens):
        nxt = model.lm_head(out.hidden[:, -1:]).argmax(dim=-1)  # (B, 1) greedy x[P+i]
        tokens.append(nxt)
        if i == new_tokens - 1:
            break  # the last token's own states would only predict past the end
        out = model.trunk(nxt, caches)
        finals.append(out.final)
        lasts.append(out.last_input)
    return torch.cat(tokens, dim=1), torch.cat(finals, dim=1), torch.cat(lasts, dim=1)


def greedy_continuations(model, prompts: torch.Tensor, new_tokens: int, batch: int,
                         on_batch: Callable[[tuple, float], None] | None = None):
    """Prompts (N, P) -> tokens (N, P + n), final and last_input (N, P + n - 1, D) (``greedy_with_states``),
    decoded ``batch`` rows at a time; ``on_batch(results_so_far, seconds)`` after every batch (partial saves)."""
    parts, t0 = [], time.perf_counter()

    def joined():
        return tuple(torch.cat([p[j] for p in parts]) for j in range(3))

    for i in range(0, prompts.shape[0], batch):
        parts.append(greedy_with_states(model, prompts[i : i + batch], new_tokens))
        if on_batch is not None:
            on_batch(joined(), time.perf_counter() - t0)
    return joined()


def save_distilled(path: Path, tokens: torch.Tensor, final: torch.Tensor, last_input: torch.Tensor,
                   meta: dict) -> None:
    """One safetensors file (tokens int32, states fp32, ``meta`` as JSON), written atomically."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"tokens": tokens.int().contiguous(), "final": final.contiguous(), "last_input": last_input.contiguous()},
              str(tmp), metadata={"meta": json.dumps(meta)})
    tmp.replace(path)


def load_distilled(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        return f.get_tensor("tokens").long(), f.get_tensor("final"), f.get_tensor("last_input"), meta
