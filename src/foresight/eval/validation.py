"""Validation of a training run on fixed held-out batches (text runs, ``tasks/text.py``): the mean loss of every
objective, and the next-token loss and perplexity that ``foresight compare`` tables show.

Under torchrun every rank takes part (``foresight.train.distributed``): the batches are shared out and the sums
added over ranks."""

from __future__ import annotations

import contextlib
import math

import torch

from foresight.batch import Batch
from foresight.eval.perplexity import nll_sum
from foresight.modes import eval_mode
from foresight.train import distributed


@torch.no_grad()
def validate(lm, batches: list[Batch]) -> dict[str, float]:
    """Mean loss per objective of ``lm`` (a ``TrainableLM``) over fixed batches, plus the next-token ``val_loss``
    (the objective with ``next_token``, else the inference model's own) and ``val_ppl``.

    Data parallel, rank r scores batches r, r + N, ... and the sums are added over ranks (the same numbers as one
    process, up to the order of the additions); a rank with no batch left in a round scores a repeat whose
    numbers it drops, because every rank must take part in every sharded forward pass."""
    device = next(lm.parameters()).device
    rank, world = distributed.rank(), distributed.world_size()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    sums = {k: 0.0 for k in lm.objectives}
    counts = {k: 0 for k in lm.objectives}
    ntp_sum, ntp_count = 0.0, 0
    ntp_key = next((k for k, obj in lm.objectives.items() if obj.next_token), None)
    with eval_mode(lm):
        with autocast:
            for first in range(0, len(batches), world):
                mine = first + rank < len(batches)
                batch = batches[first + rank if mine else 0].to(device)
                outs = lm(batch)
                if ntp_key is None:  # a run without NTP: score the inference model directly
                    s, n = nll_sum(lm.model, batch.tokens[:, : batch.seq_len + 1])
                    if mine:
                        ntp_sum, ntp_count = ntp_sum + s, ntp_count + n
                if mine:
                    for key, out in outs.items():
                        sums[key] += float(out.loss_sum)
                        counts[key] += int(out.count)
    if world > 1:
        keys = list(lm.objectives)
        total = torch.tensor([*(sums[k] for k in keys), *(counts[k] for k in keys), ntp_sum, ntp_count],
                             dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total)
        sums = dict(zip(keys, total[: len(keys)].tolist()))
        counts = dict(zip(keys, total[len(keys): 2 * len(keys)].tolist()))
        ntp_sum, ntp_count = total[-2].item(), total[-1].item()
    if ntp_key is not None:
        ntp_sum, ntp_count = sums[ntp_key], counts[ntp_key]
    val_loss = ntp_sum / max(ntp_count, 1)
    result = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}
    result.update({f"val_{k}_loss": sums[k] / max(counts[k], 1) for k in lm.objectives})
    return result
