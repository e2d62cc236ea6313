"""MuToR: multi-token prediction with register tokens (Gerontopoulos et al. 2025, "Multi-Token Prediction Needs
Registers", arXiv 2505.10518, §3; docs/objectives.md).

A learned register embedding r is interleaved after the input tokens, (x_0, r, x_1, r, ..., x_{T-1}, r) in the
paper. The register after x_t predicts x[t+d], d drawn uniformly from 1 .. d_max once per sequence, through the
model's own final norm and output head. Under the attention mask

- a regular token sees the regular tokens up to itself and no register, so its states equal a plain forward's
  (NTP's loss is unchanged; registers can be dropped at inference, which is what generation does);
- a register sees the regular tokens up to the one it follows, and itself, never another register;

and with the RoPE position id t + d - 1 (the position of x[t+d-1], the token that would predict x[t+d] under
NTP), so the offset is told to the model by the position alone and one embedding serves every d.

Layout (ours): attention is order-free given the mask and the position ids, so the registers are appended after
the T tokens rather than interleaved (same numbers, tested against explicit per-register sequences), and placed
only after the positions NTP trains (an unscored register changes nothing): T + K inputs, K the most trained
positions of a row (star graph: 24 + 4 instead of 48; text without a loss mask: 2T).

The register loss is a mean cross-entropy over the registers of the trained positions; the paper trains
(1 - a)·L_ntp + a·L_reg (a = 0.3 recommended with d_max = 4): a recipe writes
``[{name: ntp, weight: 0.7}, {name: mutor, weight: 0.3, d_max: 4}]``.

This objective runs its own trunk pass over tokens + registers (``Transformer.trunk_embeds``) and reads nothing of
the run's plain pass; NTP keeps reading the plain pass (equal to the register pass's tokens: tested), so
``ntp + mutor`` costs one plain and one register forward/backward per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model.layers import Block
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective, shifted_labels
from foresight.ops import linear_cross_entropy

MAX_D = 128  # the loader keeps 128 look-ahead tokens (data/loader.py RESERVE): the register after x[T-1] reads x[T-1+d]
EMBEDDINGS = ("shared", "per_offset")


@dataclass
class MuToRConfig:
    """Multi-token prediction with registers (MuToR paper §3; options in docs/objectives.md)."""

    weight: float | list = 0.3  # a: the register loss weight (the paper's (1 - a)·L_ntp + a·L_reg; give ntp 1 - a)
    d_max: int = 4  # the register after x_t predicts x[t+d], d uniform in 1 .. d_max, drawn per sequence
    embeddings: str = "shared"  # "shared": one register embedding for every d (the paper); "per_offset": one per d

    def __post_init__(self) -> None:
        if isinstance(self.d_max, bool) or not isinstance(self.d_max, int) or not 1 <= self.d_max <= MAX_D:
            raise ForesightError(f"MuToR d_max must be an integer in 1 .. {MAX_D}, got {self.d_max!r}")
        if self.embeddings not in EMBEDDINGS:
            raise ForesightError(f"MuToR embeddings must be one of {list(EMBEDDINGS)}, got {self.embeddings!r}")


def register_slots(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the registers go: ``after`` (B, K) long, the token t each register follows, and ``valid`` (B, K) bool.

    One register per position NTP trains (its next-token label is kept: the loss mask's positions, or every
    position without one), left-packed per row; K is the largest count over the rows, shorter rows padded with
    invalid slots (after = 0, never scored). A register changes nothing but its own prediction, so placing none at
    untrained positions gives the loss of one after every token, for the cost of T + K inputs instead of 2T (star
    graph: 24 + 4 rather than 48)."""
    trained = shifted_labels(batch, 0) != IGNORE_INDEX  # (B, T)
    k = max(int(trained.sum(1).max()), 1)
    # Stable sort puts each row's trained positions first, in order: (B, T) -> the first K columns.
    order = torch.sort((~trained).to(torch.int8), dim=1, stable=True).indices[:, :k]  # (B, K)
    valid = trained.gather(1, order)  # (B, K)
    return torch.where(valid, order, torch.zeros_like(order)), valid


def register_mask(after: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, 1, T + K, T + K) bool, True = query i may attend key j, for the inputs x_0 .. x_{T-1} then K registers,
    register k following token ``after[b, k]``: a token sees the tokens up to itself (causal) and no register; a
    register sees the tokens up to the one it follows, and itself, never another register. Where every row has
    the same registers (no loss mask), the (T + K, T + K) mask of row 0, shared."""
    b, k = after.shape
    t = torch.arange(seq_len, device=after.device)
    tokens = (t[None, :] <= t[:, None]).expand(b, seq_len, seq_len)  # (B, T, T) causal
    hidden = torch.zeros(b, seq_len, k, dtype=torch.bool, device=after.device)  # (B, T, K): tokens never see registers
    reg_tok = t[None, None, :] <= after[:, :, None]  # (B, K, T)
    reg_reg = torch.eye(k, dtype=torch.bool, device=after.device).expand(b, k, k)  # (B, K, K): itself only
    mask = torch.cat([torch.cat([tokens, hidden], 2), torch.cat([reg_tok, reg_reg], 2)], 1)[:, None]
    return mask[0, 0] if bool((after == after[:1]).all()) else mask


def register_positions(after: torch.Tensor, offsets: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, T + K) long RoPE position ids: token t at t, the register after t at t + d_b - 1 (``offsets`` (B,)
    holds each row's d): the position of x[t+d-1], the token that would predict x[t+d] under NTP."""
    tokens = torch.arange(seq_len, device=after.device).expand(after.shape[0], seq_len)  # (B, T)
    return torch.cat([tokens, after + offsets[:, None] - 1], 1)  # (B, T + K)


def register_labels(batch: Batch, offsets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, T): row b's register after x_t is labelled x[t + d_b], i.e. MTP's label at offset d_b - 1
    (``shifted_labels``: loss mask, negative ids, document horizon and stream end applied alike)."""
    labels = torch.full((offsets.shape[0], batch.seq_len), ignore_index, dtype=torch.long, device=offsets.device)
    for d in offsets.unique().tolist():
        rows = offsets == d
        labels[rows] = shifted_labels(batch, d - 1, ignore_index)[rows]
    return labels


class MuToR(Objective):
    """A register embedding (one, or one per offset) after every trained token; the loss of the registers'
    predictions of x[t+d] through the model's own head."""

    name = "mutor"

    def __init__(self, cfg: MuToRConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.d_max if cfg.embeddings == "per_offset" else 1
        self.registers = nn.Parameter(torch.empty(n, model_cfg.hidden_size))  # (n, D), used like embedding rows
        nn.init.normal_(self.registers, std=model_cfg.init_std)
        self._block_params, self._n_layers = _dense_block_params(model_cfg), model_cfg.n_layers

    @classmethod
    def paper_label(cls, spec: dict) -> str:
        return f"MuToR-{spec.get('d_max', MuToRConfig.d_max)}"

    @property
    def lookahead(self) -> int:
        return self.cfg.d_max  # the register after x[T-1] may predict x[T-1+d_max]

    def compute(self) -> Compute:
        # A second trunk pass over 2 inputs (token, register) per trained token (no loss mask), whose attention spans
        # 2T inputs: 2x the blocks' parameters and 4x the 6·L·T·D attention term; the head on the register rows only.
        return Compute(block_params=2 * self._block_params, blocks=4 * self._n_layers, head_uses=1)

    def count(self, batch: Batch) -> torch.Tensor:
        # The registers placed (one per position NTP trains): the divisor cannot depend on the d drawn in forward.
        # The sum skips a register whose x[t+d] lies past a document boundary or is an ignored id.
        return (shifted_labels(batch, 0) != IGNORE_INDEX).sum()

    def rows_needed(self, batch: Batch) -> torch.Tensor | None:
        return batch.loss_mask  # reads nothing of the plain pass: claims no rows beyond the loss mask's

    def sample_offsets(self, batch: Batch) -> torch.Tensor:
        """(B,) long: each sequence's d, uniform in 1 .. d_max (the paper draws one d per sequence)."""
        b = batch.tokens.shape[0]
        return torch.randint(1, self.cfg.d_max + 1, (b,), device=batch.tokens.device)

    def inputs(self, model, input_ids: torch.Tensor, offsets: torch.Tensor, k: int) -> torch.Tensor:
        """(B, T + K, D): the token embeddings of ``input_ids`` (B, T), then K copies of row b's register embedding."""
        x = model.embed_tokens(input_ids)  # (B, T, D)
        index = offsets - 1 if self.registers.shape[0] > 1 else torch.zeros_like(offsets)  # (B,)
        reg = self.registers[index].to(x.dtype)[:, None, :].expand(-1, k, -1)  # (B, K, D)
        return torch.cat([x, reg], 1)

    def forward(self, out, batch: Batch, model, offsets: torch.Tensor | None = None) -> LossOutput:
        """``out`` (the plain pass) is not read. ``offsets`` (B,): each row's d (drawn when None; tests)."""
        if offsets is None:
            offsets = self.sample_offsets(batch)
        t = batch.seq_len
        after, valid = register_slots(batch)  # (B, K)
        x = self.inputs(model, batch.input_ids, offsets, after.shape[1])  # (B, T + K, D)
        # Attention is order-free given the mask and the position ids, so registers appended after the T tokens
        # compute what the paper's interleaved (x_0, r, x_1, r, ...) does.
        inter = model.trunk_embeds(x, register_mask(after, t), register_positions(after, offsets, t))
        labels = register_labels(batch, offsets).gather(1, after)  # (B, K): x[t+d] of each register
        keep = valid & (labels != IGNORE_INDEX)  # (B, K)
        hidden = inter.hidden[:, t:][keep]  # (n, D): the registers' final normed states
        losses = linear_cross_entropy(hidden, model.lm_head.weight, labels[keep])  # (n,)
        return LossOutput(losses.sum(), valid.sum(), {"mutor_d": offsets.float().mean()})


def _dense_block_params(model_cfg) -> int:
    """Parameters of the trunk's blocks as dense blocks, counted on the meta device (no memory): the FLOPs
    estimate of the second pass (an MoE trunk's would count its active experts; not distinguished here)."""
    with torch.device("meta"):
        block = Block(model_cfg)
    return model_cfg.n_layers * sum(p.numel() for p in block.parameters())
