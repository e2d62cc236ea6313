"""Autoregressive generation with the KV cache: greedy decoding and temperature / top-k / top-p sampling.

``generate`` works with any module that has ``new_caches()`` and ``__call__(input_ids, caches) -> logits
(B, T, V)`` — the trunk ``foresight.model.Transformer`` (whose forward is the next-token path) in particular.
The logit filters are small pure functions so that they can be tested (and reused) on their own.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import nn

from foresight.modes import eval_mode

__all__ = ["generate", "sample_next_token", "top_k_filter", "top_p_filter"]


def _check_top_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"top_k must be an integer >= 1 (or None for no top-k filter), got {k!r}")
    return int(k)


def _check_top_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, Real) or not (0.0 < float(p) <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (or None for no nucleus filter), got {p!r}")
    return float(p)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the ``k`` largest logits of each row (last dim); set the others to -inf.

    Ties at the k-th value are broken by ``torch.topk``, so exactly ``min(k, V)`` entries stay finite
    (when the row had at least that many finite logits). Returns a new tensor; ``logits`` is not modified.
    """
    k = _check_top_k(k)
    if k >= logits.shape[-1]:
        return logits.clone()
    idx = torch.topk(logits, k, dim=-1).indices
    drop = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, idx, False)
    return logits.masked_fill(drop, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose cumulative probability is >= p.

    Probabilities are ``softmax(logits)`` over the last dim (computed in fp32 at least). A token is kept when
    the probability mass of the tokens ranked strictly above it is < p, so the most probable token is always
    kept. ``p == 1`` keeps everything. Returns a new tensor with the dropped logits set to -inf.
    """
    p = _check_top_p(p)
    if p >= 1.0:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    work = torch.promote_types(logits.dtype, torch.float32)
    probs = torch.softmax(sorted_logits.to(work), dim=-1)
    mass_above = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked before each one
    drop_sorted = mass_above >= p
    drop_sorted[..., 0] = False  # the top token always stays (guards against rounding)
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from next-token logits (B, V) -> (B,) long.

    ``temperature <= 0``: greedy argmax (top_k / top_p are irrelevant then). Otherwise logits / temperature,
    then the top-k filter, then the top-p filter, then ``torch.multinomial`` with ``generator``.
    """
    if temperature is None or temperature <= 0:
        return logits.argmax(dim=-1)
    work = torch.promote_types(logits.dtype, torch.float32)
    scores = logits.to(work) / float(temperature)
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None:
        scores = top_p_filter(scores, top_p)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _validate(input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, prompt_len) tensor of token ids, got {shape}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.shape[1] < 1:
        raise ValueError("input_ids must hold at least one prompt token per row")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or math.isnan(float(temperature)):
        raise ValueError(f"temperature must be a number (<= 0 means greedy), got {temperature!r}")
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    on_token=None,
    stop=None,
) -> torch.Tensor:
    """Extend ``input_ids`` (B, P) by up to ``max_new_tokens`` tokens -> (B, P + n), n <= max_new_tokens.

    ``on_token(ids)``, when given, is called with each new column (B,) as soon as it is chosen (streaming).
    ``stop(new)``, when given (B = 1 only), is called with the new tokens so far (n,) after each step; True ends
    generation there (stop sequences: the caller cuts the text).

    The prompt is run once through the model with fresh KV caches (``model.new_caches()``), then one token per
    step. ``temperature <= 0`` is greedy; otherwise see ``sample_next_token``. With ``eos_id``, a row that has
    produced ``eos_id`` keeps emitting it, and generation stops as soon as every row has (so n may be smaller
    than ``max_new_tokens``; the output stays rectangular). The model runs in eval mode; the train/eval mode of
    every submodule is restored afterwards.
    """
    _validate(input_ids, max_new_tokens, temperature, top_k, top_p)
    input_ids = input_ids.long()
    if stop is not None and input_ids.shape[0] != 1:
        raise ValueError(f"stop works on one row at a time, got a batch of {input_ids.shape[0]}")
    if max_new_tokens == 0:
        return input_ids.clone()

    with eval_mode(model):
        caches = model.new_caches()
        logits = model(input_ids, caches)[:, -1, :]  # prefill: the whole prompt once
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        pieces = [input_ids]
        for step in range(max_new_tokens):
            nxt = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            nxt = nxt.to(input_ids.device)
            if eos_id is not None:
                nxt = nxt.masked_fill(done, eos_id)
                done |= nxt == eos_id
            pieces.append(nxt[:, None])
            if on_token is not None:
                on_token(nxt)
            if step + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
                break
            if stop is not None and stop(torch.cat(pieces[1:], dim=1)[0]):
                break
            logits = model(nxt[:, None], caches)[:, -1, :]  # one new token against the cache
        return torch.cat(pieces, dim=1)
