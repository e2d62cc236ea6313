"""DeepSeek-style sequential multi-token prediction (DeepSeek-V3, arXiv 2412.19437 §2.2).

Module k = 1..D: ``h'_k = M_k [RMSNorm(h_{k-1}); RMSNorm(Emb(x[t+k]))]`` (M_k: Linear 2D -> D), then one
transformer block gives h_k, which predicts x[t+1+k] through the output head. h_0 is the main model's last
hidden state. Embedding and output head are shared with the main model. Loss ``(lambda / D) · sum_k L_k``
(``reduce="mean"``) or ``lambda · sum_k L_k`` (``reduce="sum"``), each L_k divided by the main model's count
(T positions, as the paper normalises, not T - k).

Variants found in checkpoints in the wild are explicit options: concatenation order, the source of h_0
(before or after the main model's final norm), projection bias, and a per-module final norm.

Training (``forward_backward``) runs one module's graph at a time, as Meta MTP's memory-efficient
implementation does for parallel heads (Meta MTP §2), made exact for a chain: the states h_k passed between
modules are detached, and their gradients are carried backward from module D to module 1 by hand.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, fields
from typing import Callable, ContextManager

import torch
from torch import nn

from foresight.batch import Batch
from foresight.errors import ForesightError
from foresight.model.layers import Block, RMSNorm, init_weights
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective, backward, shifted_labels
from foresight.ops import linear_cross_entropy

PRESETS = {
    # The TOP paper's DS-MTP baseline (docs/objectives.md, "Presets"): projection with bias, hidden first,
    # lambda = 1 summed over modules, shared final norm. Its code descends from torchtitan, which feeds the
    # hidden state from before the final norm.
    "top_paper": dict(weight=1.0, depth=3, concat="hidden_first", h0="pre_norm", proj_bias=True, reduce="sum",
                      final_norm="shared"),
    # DeepSeek-V3: D = 1, lambda 0.3 for the first 10T of 14.8T tokens then 0.1, embedding first, no bias,
    # mean over depth, its own norm before the shared head (``shared_head.norm`` in the checkpoints), and the
    # main model's normalised output as h_0 (as Megatron and vLLM feed it).
    "deepseek_v3": dict(weight=[[{"frac": 0.0}, 0.3], [{"frac": 0.676}, 0.1]], depth=1, concat="embed_first",
                        h0="post_norm", proj_bias=False, reduce="mean", final_norm="own"),
}

_CHOICES = {
    "concat": ("hidden_first", "embed_first"),
    "h0": ("pre_norm", "post_norm"),
    "reduce": ("sum", "mean"),
    "final_norm": ("shared", "own"),
}


@dataclass
class DSMTPConfig:
    """DS-MTP. Fields left unset (None) come from ``preset``."""

    preset: str = "top_paper"  # "top_paper" or "deepseek_v3"
    weight: float | list | None = None  # lambda: a number or a schedule [[{frac: f}, value], ...]
    depth: int | None = None  # D: number of sequential modules (DS-MTP-n in the TOP paper has D = n - 1)
    concat: str | None = None  # "hidden_first" (paper formula, MiMo) or "embed_first" (DeepSeek, Megatron)
    h0: str | None = None  # "pre_norm" or "post_norm": main hidden state fed to module 1
    proj_bias: bool | None = None  # bias on the 2D -> D projection
    reduce: str | None = None  # "sum" or "mean" over the D module losses
    final_norm: str | None = None  # "shared" final norm or each module's "own"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ForesightError(f"dsmtp.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for f in fields(self):
            if f.name != "preset" and getattr(self, f.name) is None:
                setattr(self, f.name, PRESETS[self.preset][f.name])
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ForesightError(f"dsmtp.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        from foresight.model.limits import MAX_DSMTP_DEPTH, check_int

        check_int(self.depth, "dsmtp.depth", 1, MAX_DSMTP_DEPTH)  # each module is a full block


class DSMTPModule(nn.Module):
    """One sequential module: hnorm, enorm, eh_proj (2D -> D), a block, optionally its own final norm."""

    def __init__(self, model_cfg, cfg: DSMTPConfig) -> None:
        super().__init__()
        d = model_cfg.hidden_size
        self.hnorm = RMSNorm(d, model_cfg.norm_eps)
        self.enorm = RMSNorm(d, model_cfg.norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=cfg.proj_bias)
        self.block = Block(model_cfg)
        self.norm = RMSNorm(d, model_cfg.norm_eps) if cfg.final_norm == "own" else None
        self.hidden_first = cfg.concat == "hidden_first"

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache=None) -> torch.Tensor:
        """``cache``: the block's KVCache when drafting token by token (speculative decoding), else None."""
        h, e = self.hnorm(h_prev), self.enorm(emb)  # (B, T, D) each
        joined = torch.cat([h, e] if self.hidden_first else [e, h], dim=-1)  # (B, T, 2D)
        return self.block(self.eh_proj(joined), cos, sin, cache)


class DSMTP(Objective):
    name = "dsmtp"
    head_metric = "dsmtp_depth"
    draft_order = 1
    draft_heads = "DS-MTP modules"
    cached_heads = True

    @classmethod
    def paper_label(cls, spec: dict) -> str:
        # DS-MTP-n in the TOP paper has D = n - 1 modules; a spec without a depth is named by its preset
        depth = spec.get("depth")
        return f"DS-MTP-{depth + 1}" if depth is not None else f"DS-MTP ({spec.get('preset', DSMTPConfig.preset)})"

    def __init__(self, cfg: DSMTPConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DSMTPModule(model_cfg, cfg) for _ in range(cfg.depth))
        init_weights(self.layers, model_cfg.init_std)

    @property
    def lookahead(self) -> int:
        return self.cfg.depth + 1

    def compute(self) -> Compute:
        # D modules: a 2D -> D projection and a block each, each applying the shared output head once more
        return Compute(sum(p.numel() for p in self.layers.parameters()), len(self.layers), len(self.layers))

    def drafter(self, model, n_draft, stacked, vocab, forms):
        return forms.DSMTPDrafter(model, self, n_draft, vocab)

    def warm_start(self, model, scale: float = 1.0) -> None:
        """Each module's block starts as a copy of ``model``'s last block; its projection starts by passing the
        normalised h_{k-1} times ``scale`` and ignoring the token embedding (those weights start at zero and
        learn), so the copied block first sees inputs of the size it was trained on; an own final norm starts
        as the trunk's."""
        last = model.layers[-1].state_dict()
        for m in self.layers:
            m.block.load_state_dict(copy.deepcopy(last))
        d = model.cfg.hidden_size
        with torch.no_grad():
            for m in self.layers:
                parts = [scale * torch.eye(d), torch.zeros(d, d)]  # (D, D) each: hidden part, embedding part
                m.eh_proj.weight.copy_(torch.cat(parts if m.hidden_first else parts[::-1], dim=1))
                if m.eh_proj.bias is not None:
                    m.eh_proj.bias.zero_()
                if m.norm is not None:
                    m.norm.weight.copy_(model.norm.weight)

    def head_states(self, out, batch: Batch, model):
        h = self.h0(out)
        for k in range(1, len(self.layers) + 1):  # module k: h_{k-1} and Emb(x[t+k]) -> h_k (B, T, D)
            h = self._step(k, h, out, batch, model)
            yield h, self.norm_of(k, model)

    def h0(self, out) -> torch.Tensor:
        """Module 1's input h_0 (B, T, D): the trunk's hidden after (``post_norm``) or before its final norm."""
        return out.hidden if self.cfg.h0 == "post_norm" else out.final

    def norm_of(self, k: int, model) -> nn.Module:
        """The norm before the shared head at depth k (1 .. D): the module's own, else the model's final norm."""
        module = self.layers[k - 1]
        return module.norm if module.norm is not None else model.norm

    def count(self, batch: Batch) -> torch.Tensor:
        return (shifted_labels(batch, 0) != IGNORE_INDEX).sum()

    def _step(self, k: int, h: torch.Tensor, out, batch: Batch, model) -> torch.Tensor:
        """Module k (1 .. D): h_{k-1} (B, T, D) -> h_k (B, T, D), pre-norm."""
        # Module k at position t reads the token x[t+k]; positions past the stream read id 0 (their label is
        # ignored anyway).
        tokens, t = batch.tokens, batch.seq_len
        ids = torch.zeros_like(tokens[:, :t])
        avail = max(0, min(t, tokens.shape[1] - k))
        ids[:, :avail] = tokens[:, k : k + avail].clamp(min=0)
        return self.layers[k - 1](h, model.embed_tokens(ids), out.cos, out.sin)

    def _depth_sum(self, k: int, h: torch.Tensor, batch: Batch, model) -> torch.Tensor:
        """Loss sum of depth k: h_k (B, T, D) predicts x[t+1+k] through the (own or shared) norm and the head."""
        norm = self.norm_of(k, model)
        labels = shifted_labels(batch, k)  # (B, T)
        return linear_cross_entropy(norm(h).reshape(-1, h.shape[-1]), model.lm_head.weight, labels.reshape(-1)).sum()

    def _result(self, depth_sums: list[torch.Tensor], count: torch.Tensor, like: torch.Tensor) -> LossOutput:
        total = like.new_zeros((), dtype=torch.float32)
        metrics = {}
        for k, depth_sum in enumerate(depth_sums, start=1):
            total = total + depth_sum
            metrics[f"{self.head_metric}{k}"] = depth_sum.detach() / count.clamp(min=1)
        if self.cfg.reduce == "mean":
            total = total / self.cfg.depth
        return LossOutput(total, count, metrics)

    def forward(self, out, batch: Batch, model) -> LossOutput:
        h = self.h0(out)
        depth_sums = []
        for k in range(1, self.cfg.depth + 1):
            h = self._step(k, h, out, batch, model)
            depth_sums.append(self._depth_sum(k, h, batch, model))
        return self._result(depth_sums, self.count(batch), out.hidden)

    def forward_backward(self, out, batch: Batch, model, scale: float,
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> LossOutput:
        """Exact module-by-module backward, one module's graph alive at a time.

        (1) Forward through modules 1 .. D-1, keeping only the states h_1 .. h_{D-1} (detached). (2) For
        k = D .. 1: re-run module k from h_{k-1} (a leaf), then one backward of ``scale_k · L_k`` together
        with the gradient module k+1 left on h_k; h_{k-1}'s ``.grad`` is what module k-1 receives. Module 1's
        input is the trunk's leaf, so its gradient lands there. Cost: one extra forward of modules 1 .. D-1
        (none for D = 1). Step (1) keeps grad mode on so that both passes take the same (compiled) path and
        give bitwise the same h_k.
        """
        depth = self.cfg.depth
        scale_k = scale / depth if self.cfg.reduce == "mean" else scale
        states = [self.h0(out)]  # h_0 .. h_{D-1}, each (B, T, D)
        with autocast():
            for k in range(1, depth):
                states.append(self._step(k, states[-1], out, batch, model).detach())
        depth_sums: list[torch.Tensor] = [None] * depth  # type: ignore[list-item]
        carried = None  # gradient of the loss w.r.t. h_k, from module k+1
        for k in range(depth, 0, -1):
            h_in = states[k - 1] if k == 1 else states[k - 1].requires_grad_()
            with autocast():
                h = self._step(k, h_in, out, batch, model)
                depth_sum = self._depth_sum(k, h, batch, model)
            backward(depth_sum * scale_k, (h, carried))
            depth_sums[k - 1] = depth_sum.detach()
            carried = h_in.grad if k > 1 else None
            states[k - 1] = None  # drop the leaf (and its gradient) once passed on
        return self._result(depth_sums, self.count(batch), out.hidden)
