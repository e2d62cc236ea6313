"""What every objective shares: the (sum, count) it returns, label shifting (the batch it reads is
``foresight.batch.Batch``).

Objectives return a *sum* of per-position losses and the *count* it should be divided by; the trainer
divides once, by counts taken over the whole optimiser step, so gradient accumulation (and several
devices) give the same update as one big batch (docs/objectives.md, "Combining objectives").

Training uses ``forward_backward``: each objective runs its forward and the backward of its scaled loss at
once, reading leaves of the trunk's outputs, so its graph is freed before the next objective (or head) runs
(Meta MTP §2, "memory-efficient implementation"); ``forward`` stays the reference and the
evaluation path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError

IGNORE_INDEX = -100
# An objective class -> its class on a transformers model's parts (``Objective.on_parts``). Filled by
# ``wrapped.py``, which owns those classes, when the package (``objectives/__init__.py``) imports it: the objective
# modules never import ``wrapped.py``, so the imports inside objectives/ run one way.
ON_PARTS: dict[type, type] = {}


@dataclass
class LossOutput:
    """A sum-reduced loss and the count it is to be divided by, plus detached diagnostics."""

    loss_sum: torch.Tensor  # scalar, differentiable
    count: torch.Tensor  # scalar long
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, per-head losses etc.

    def detached(self) -> "LossOutput":
        return LossOutput(self.loss_sum.detach(), self.count, {k: v.detach() for k, v in self.metrics.items()})


def shifted_labels(batch: Batch, offset: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels (B, T) of the prediction ``offset`` tokens past the next one: ``tokens[:, t + 1 + offset]``.

    Positions whose label lies past the end of ``tokens``, or that ``loss_mask`` switches off, or whose
    label is negative, or lies past ``horizon`` (a document boundary), get ``ignore_index``.
    """
    tokens, t = batch.tokens, batch.seq_len
    b, length = tokens.shape
    start = 1 + offset
    labels = torch.full((b, t), ignore_index, dtype=torch.long, device=tokens.device)
    avail = max(0, min(t, length - start))
    labels[:, :avail] = tokens[:, start : start + avail]
    labels = labels.masked_fill(labels < 0, ignore_index)
    if batch.loss_mask is not None:
        labels = labels.masked_fill(~batch.loss_mask, ignore_index)
    if batch.horizon is not None and offset > 0:
        labels = labels.masked_fill(batch.horizon < offset, ignore_index)
    return labels


@dataclass(frozen=True)
class Compute:
    """What an objective adds to the training FLOPs of one token (``train/flops.py``; docs/baselines.md).

    ``block_params``: parameters of the blocks and projections it runs on every token; ``blocks``: how many
    attention blocks among them (for the 6·L·T·D attention term); ``head_uses``: applications of a V×D output
    head beyond the model's own next-token head."""

    block_params: int = 0
    blocks: int = 0
    head_uses: int = 0


class Objective(nn.Module):
    """Base class: ``forward(out, batch, model) -> LossOutput``.

    ``out`` is the trunk's ``TrunkOutput`` for ``batch.input_ids``; ``model`` is the ``Transformer`` whose
    shared parts (embedding, final norm, output head) an objective may use. ``lookahead`` is how many tokens
    past ``seq_len`` the data must supply for this objective's labels.

    Everything the rest of the library asks of an objective is declared here, so a new objective is a module in
    ``objectives/`` registered in ``objectives.REGISTRY`` (``objectives.register``) and nothing else: its
    paper label (``paper_label``), training FLOPs (``compute``), look-ahead, whether it is the next-token loss
    (``next_token``), its per-head metric names (``head_metric``) and, if it can draft for speculative
    decoding, its drafter (``drafter``; ``draft_order`` ranks it for ``--speculative auto``). Optional
    capabilities, each refused in one line by default: heads trained on a frozen trunk's cached states
    (``cached_heads``: ``warm_start``, ``head_states``; ``benchmarks/cached_heads.py``), a head ranking upcoming
    tokens (``future_head``; ``generate/top_draft.py``) and the objective on a transformers model (``on_parts``;
    ``foresight.wrap``). Export formats map weights by name in ``hf/`` (a file format's layout belongs with the
    format).
    """

    name: str = "objective"
    next_token: bool = False  # its loss is the model's next-token loss (validation perplexity reads it)
    head_metric: str | None = None  # per-head metric prefix: metrics f"{head_metric}{k}", k = 1, 2, ...
    draft_order: int | None = None  # rank among drafting objectives for ``--speculative auto`` (low first)
    draft_heads: str = ""  # what drafts, for messages: "MTP heads"
    cached_heads: bool = False  # its heads train on cached trunk states: it implements warm_start and head_states

    @classmethod
    def paper_label(cls, spec: dict) -> str:
        """The TOP paper's name for this objective as ``spec`` (a recipe entry) configures it, e.g. MTP-4."""
        return cls.name.upper()

    @property
    def lookahead(self) -> int:
        return 1

    def compute(self) -> Compute:
        """Blocks and head applications this objective adds per trained token (see ``Compute``)."""
        return Compute()

    def drafter(self, model, n_draft: int | None, stacked: bool, vocab, forms):
        """A ``generate.drafters.Drafter`` proposing tokens with this objective's heads for ``model`` (a
        ``Transformer``), or None if it cannot draft. ``vocab``: an optional ``DraftVocab``. ``forms``: the
        drafter classes ``generate/`` offers (``generate.speculative.DRAFTER_FORMS``), passed in so that
        objectives/ never imports generate/ (which imports objectives/)."""
        return None

    def warm_start(self, model, scale: float = 1.0) -> None:
        """Start its head blocks as copies of ``model``'s last trunk block (``benchmarks/cached_heads.py``); ``scale``:
        the size of that block's input, for heads that feed a block a projection of the hidden state."""
        raise unsupported(self.name, CACHED_HEADS)

    def head_states(self, out, batch: Batch, model) -> Iterator[tuple[torch.Tensor, nn.Module]]:
        """For each extra head / depth k = 1, 2, ...: the state h (B, T, D) that predicts x[t+1+k] from the trunk
        outputs ``out`` and the norm applied before the shared output head, one at a time (the caller scores h
        through ``norm`` and any output rows it likes, e.g. a reduced draft vocabulary)."""
        raise unsupported(self.name, CACHED_HEADS)

    def future_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """A map from hidden states (..., D) to scores (..., V) that rank every vocabulary item by how soon it
        follows (TOP paper §3; ``generate/top_draft.py`` drafts with it), or None (the default): it has none."""
        return None

    @classmethod
    def on_parts(cls, cfg, parts) -> "Objective":
        """This objective, configured by ``cfg``, with its heads built on a transformers model's ``parts``
        (``foresight.wrap``; ``objectives/parts.py``): an ``objectives.wrapped.OnParts``, the class that
        ``wrapped.py`` registered for it in ``ON_PARTS``. Default: that class, or refused if there is none."""
        on_parts = ON_PARTS.get(cls)
        if on_parts is None:
            raise unsupported(cls.name, "foresight.wrap")
        return on_parts(cfg, parts)

    def rows_needed(self, batch: Batch) -> torch.Tensor | None:
        """The positions (B, T) bool whose ``out.hidden`` this objective reads for ``batch``, if it reads nothing
        else of the trunk's output (no ``final``, no ``last_input``); None (the default): everything. When every
        objective of a model answers a mask, the training pass runs the trunk's last block only on those rows
        (``Transformer.trunk(rows=...)``), and ``out.hidden`` holds just them: read it with ``hidden_rows``."""
        return None

    def count(self, batch: Batch) -> torch.Tensor:
        """The divisor of this objective's loss sum for ``batch`` (needs no forward pass)."""
        raise NotImplementedError

    def forward_backward(self, out, batch: Batch, model, scale: float,
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> LossOutput:
        """Forward, then backward of ``scale · loss_sum``; returns the ``LossOutput`` detached.

        ``out`` holds leaves (detached trunk tensors that require grad): the backward stops there and leaves the
        trunk's share in their ``.grad``, for one trunk backward (``TrainableLM.forward_backward``). ``scale`` is
        the objective's weight over its count for the optimiser step. Forward passes run under ``autocast()``,
        backward passes outside it. MTP and DS-MTP override this to go one head at a time (Meta MTP §2).
        """
        with autocast():
            result = self(out, batch, model)
        backward(result.loss_sum * scale)
        return result.detached()


CACHED_HEADS = "training heads on cached trunk states"


def unsupported(name: str, what: str) -> ForesightError:
    """The one line refusing a capability objective ``name`` does not declare."""
    return ForesightError(f"objective {name!r} does not support {what}")


def hidden_rows(out, mask: torch.Tensor) -> torch.Tensor:
    """(n, D): ``out.hidden`` at the positions of ``mask`` (B, T) bool, row-major, whether the trunk ran every
    position (``out.rows`` None) or only ``out.rows`` (then ``mask`` must lie inside it: the objective asked
    for these rows through ``rows_needed``)."""
    return out.hidden[mask] if out.rows is None else out.hidden[mask[out.rows]]


def backward(loss: torch.Tensor, *pairs: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    """Backward of the scalar ``loss`` plus, for each (tensor, grad) pair whose grad is not None, ``grad`` fed
    into ``tensor`` (a gradient carried from a later step); nothing when no root needs a gradient."""
    roots = [(loss, None)] if loss.requires_grad else []
    roots += [(t, g) for t, g in pairs if g is not None and t.requires_grad]
    if roots:
        torch.autograd.backward([t for t, _ in roots], [g for _, g in roots])
