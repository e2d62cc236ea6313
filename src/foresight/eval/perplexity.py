"""Next-token loss and perplexity of a language model on held-out tokens.

The windows are those of ``foresight.data.loader.eval_windows``: consecutive, non-overlapping sequences of
``seq_len`` inputs from the start of the split, each with its next-token labels. Training's validation uses
the same windows, so ``perplexity(model, data_dir, T, B, n)`` reproduces a run's logged ``val_loss``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from foresight.data.loader import eval_windows
from foresight.data.shards import PreparedData, TokenStream
from foresight.errors import ForesightError
from foresight.model import Transformer
from foresight.modes import eval_mode
from foresight.ops import linear_cross_entropy


class _ArrayStream:
    """A 1-D array of token ids with the ``TokenStream`` reading interface."""

    def __init__(self, ids) -> None:
        self.ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, start: int, length: int) -> np.ndarray:
        return self.ids[start : start + length].copy()


def _as_stream(data, split: str):
    if isinstance(data, (str, Path)):
        data = PreparedData.open(data)
    if isinstance(data, PreparedData):
        return data.split(split)
    if isinstance(data, (TokenStream, _ArrayStream)):
        return data
    if isinstance(data, (np.ndarray, torch.Tensor, list, tuple)):
        return _ArrayStream(data)
    raise ForesightError(f"perplexity: cannot read tokens from {type(data).__name__}; give a prepared data folder, "
                         f"PreparedData, TokenStream or a 1-D array of token ids")


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def nll_sum(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL (fp32) and label count of ``model`` on tokens (B, T + 1).

    A foresight ``Transformer`` goes through its trunk and the chunked linear cross-entropy (no (B, T, V)
    logits tensor); any other module is called on the inputs and must return logits (B, T, V) or an object
    with ``.logits`` (a Hugging Face causal LM).
    """
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    if hasattr(model, "model") and isinstance(model.model, Transformer):  # a TrainableLM
        model = model.model
    if isinstance(model, Transformer):
        hidden = model.trunk(inputs).hidden  # (B, T, D)
        losses = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, labels.reshape(-1))
        return float(losses.float().sum()), labels.numel()
    out = model(inputs)
    logits = getattr(out, "logits", out)  # (B, T, V)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
    return float(loss), labels.numel()


def _vocab_of(model: torch.nn.Module) -> int | None:
    inner = model.model if hasattr(model, "model") and isinstance(model.model, Transformer) else model
    if isinstance(inner, Transformer):
        return inner.cfg.vocab_size
    return getattr(getattr(model, "config", None), "vocab_size", None)  # a Hugging Face model


def _check_ids(model: torch.nn.Module, batches: list[np.ndarray]) -> None:
    """Every id must have a row in the model's embedding: data from a larger tokenizer is one line, not an
    IndexError from the embedding lookup (issue 21)."""
    vocab = _vocab_of(model)
    top = max(int(rows.max()) for rows in batches)
    if vocab is not None and top >= vocab:
        raise ForesightError(f"perplexity: the data holds token id {top}, outside the model's vocabulary of {vocab}; "
                             f"score data prepared with the model's own tokenizer")


@torch.no_grad()
def perplexity(model: torch.nn.Module, data, seq_len: int, batch_size: int = 8, max_batches: int | None = None,
               *, split: str = "val") -> dict[str, float]:
    """{"loss", "ppl", "tokens", "batches"}: mean next-token NLL (nats) on fixed windows, and exp of it.

    ``data``: a prepared data folder (its ``split``, validation by default), ``PreparedData``, ``TokenStream``
    or a 1-D array/tensor of ids. ``max_batches`` None = every full window of the split.
    """
    stream = _as_stream(data, split)
    batches = eval_windows(stream, seq_len, 1, batch_size, max_batches)
    if not batches:
        raise ForesightError(f"perplexity: {len(stream):,} tokens are too few for one window of {seq_len} tokens "
                             f"(plus the 128-token reserve)")
    _check_ids(model, batches)
    device = _device_of(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    total, count = 0.0, 0
    with eval_mode(model), autocast:
        for rows in batches:
            s, n = nll_sum(model, torch.from_numpy(rows).to(device))
            total, count = total + s, count + n
    loss = total / count
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count, "batches": len(batches)}
