"""MuToR: multi-token prediction with register tokens (Gerontopoulos et al. 2025, "Multi-Token Prediction Needs
Registers", arXiv 2505.10518, §3; docs/objectives.md).

A learned register embedding r is interleaved after every input token, so the trunk reads (x_0, r, x_1, r, ...,
x_{T-1}, r): 2T inputs. The register after x_t predicts x[t+d], d drawn uniformly from 1 .. d_max once per
sequence, through the model's own final norm and output head. Under the attention mask

- a regular token sees the regular tokens up to itself and no register, so its states equal a plain forward's
  (NTP's loss is unchanged; registers can be dropped at inference, which is what generation does);
- a register sees the regular tokens up to the one it follows, and itself, never another register;

and with the RoPE position id t + d - 1 (the position of x[t+d-1], the token that would predict x[t+d] under
NTP), so the offset is told to the model by the position alone and one embedding serves every d.

The register loss is a mean cross-entropy over the registers of the trained positions; the paper trains
(1 - a)·L_ntp + a·L_reg (a = 0.3 recommended with d_max = 4): a recipe writes
``[{name: ntp, weight: 0.7}, {name: mutor, weight: 0.3, d_max: 4}]``.

This objective runs its own trunk pass over the interleaved sequence (``Transformer.trunk_embeds``) and reads
nothing of the run's plain pass; NTP keeps reading the plain pass (equal to the interleaved pass's regular
tokens: tested), so ``ntp + mutor`` costs one plain and one interleaved forward/backward per step.
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


def register_mask(seq_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(2T, 2T) bool, True = query i may attend key j, for the layout x_0, r_0, x_1, r_1, ... (x_t at 2t, its
    register r_t at 2t + 1): every query sees the regular tokens x_s with s <= its own t, a register also itself;
    no query sees another register. The same for every row (d only moves position ids)."""
    index = torch.arange(2 * seq_len, device=device)
    token = index // 2  # (2T,): t of each input
    regular = index % 2 == 0  # (2T,)
    sees_token = regular[None, :] & (token[None, :] <= token[:, None])  # (2T, 2T): key x_s with s <= t
    return sees_token | torch.eye(2 * seq_len, dtype=torch.bool, device=device)  # + itself (a register)


def register_positions(offsets: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, 2T) long RoPE position ids for the interleaved layout: x_t at t, r_t at t + d_b - 1 (``offsets`` (B,)
    holds each row's d)."""
    t = torch.arange(seq_len, device=offsets.device)  # (T,)
    regular = t.expand(offsets.shape[0], seq_len)  # (B, T)
    register = t + offsets[:, None] - 1  # (B, T)
    return torch.stack([regular, register], dim=2).flatten(1)  # (B, 2T): t, t+d-1, t+1, t+d, ...


def register_labels(batch: Batch, offsets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, T): row b's register after x_t is labelled x[t + d_b], i.e. MTP's label at offset d_b - 1
    (``shifted_labels``: loss mask, negative ids, document horizon and stream end applied alike)."""
    labels = torch.full((offsets.shape[0], batch.seq_len), ignore_index, dtype=torch.long, device=offsets.device)
    for d in offsets.unique().tolist():
        rows = offsets == d
        labels[rows] = shifted_labels(batch, d - 1, ignore_index)[rows]
    return labels


class MuToR(Objective):
    """A register embedding (one, or one per offset) interleaved after every token; the loss of the registers'
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
        # A second trunk pass over 2 inputs (token, register) per trained token, whose attention spans 2T inputs:
        # 2x the blocks' parameters and 4x the 6·L·T·D attention term; the head on the register rows only.
        return Compute(block_params=2 * self._block_params, blocks=4 * self._n_layers, head_uses=1)

    def count(self, batch: Batch) -> torch.Tensor:
        # The registers of the positions NTP trains: the divisor does not depend on the d drawn in forward (the sum
        # skips a register whose x[t+d] lies past a document boundary or is ignored; without those both agree).
        return (shifted_labels(batch, 0) != IGNORE_INDEX).sum()

    def rows_needed(self, batch: Batch) -> torch.Tensor | None:
        return batch.loss_mask  # reads nothing of the plain pass: claims no rows beyond the loss mask's

    def sample_offsets(self, batch: Batch) -> torch.Tensor:
        """(B,) long: each sequence's d, uniform in 1 .. d_max (the paper draws one d per sequence)."""
        b = batch.tokens.shape[0]
        return torch.randint(1, self.cfg.d_max + 1, (b,), device=batch.tokens.device)

    def interleave(self, model, input_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(B, 2T, D): the token embeddings of ``input_ids`` (B, T) with row b's register embedding after each."""
        x = model.embed_tokens(input_ids)  # (B, T, D)
        index = offsets - 1 if self.registers.shape[0] > 1 else torch.zeros_like(offsets)  # (B,)
        reg = self.registers[index].to(x.dtype)[:, None, :].expand_as(x)  # (B, T, D)
        return torch.stack([x, reg], dim=2).flatten(1, 2)  # (B, 2T, D): x_0, r, x_1, r, ...

    def forward(self, out, batch: Batch, model, offsets: torch.Tensor | None = None) -> LossOutput:
        """``out`` (the plain pass) is not read. ``offsets`` (B,): each row's d (drawn when None; tests)."""
        if offsets is None:
            offsets = self.sample_offsets(batch)
        t = batch.seq_len
        x = self.interleave(model, batch.input_ids, offsets)  # (B, 2T, D)
        inter = model.trunk_embeds(x, register_mask(t, x.device), register_positions(offsets, t))
        labels = register_labels(batch, offsets)  # (B, T)
        keep = labels != IGNORE_INDEX  # (B, T)
        hidden = inter.hidden[:, 1::2][keep]  # (n, D): the registers' final normed states
        losses = linear_cross_entropy(hidden, model.lm_head.weight, labels[keep])  # (n,)
        return LossOutput(losses.sum(), self.count(batch), {"mutor_d": offsets.float().mean()})


def _dense_block_params(model_cfg) -> int:
    """Parameters of the trunk's blocks as dense blocks, counted on the meta device (no memory): the FLOPs
    estimate of the second pass (an MoE trunk's would count its active experts; not distinguished here)."""
    with torch.device("meta"):
        block = Block(model_cfg)
    return model_cfg.n_layers * sum(p.numel() for p in block.parameters())
