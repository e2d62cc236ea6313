"""Mixture-of-experts feed-forward layer: a softmax router, top-k SwiGLU experts, dropless, load balancing.

The OLMoE-style baseline of issue 16 (UltraMemV2 compares against an 8-active-expert MoE, UltraMemV2 paper;
docs/memory.md). Every token goes to its k best experts, with no capacity limit (dropless: nothing is dropped
or padded); the output is ``sum_k p_k · expert_k(x)`` with the router's softmax probabilities ``p`` of the chosen
experts (not renormalised, as OLMoE). ``moe_reference`` is the per-token loop it is tested against. The
load-balancing loss is returned with the output, never kept on the module: a forward recomputed by activation
checkpointing, or two forwards before the loss is read, cannot leave a stale or foreign value behind.

Shapes: N tokens (B·T flattened), D hidden, E experts, k chosen per token, F expert width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foresight.model.config import ModelConfig


class MoE(nn.Module):
    """Top-k routed SwiGLU experts. ``forward(x)`` returns the output and that forward's load-balancing loss (a
    differentiable scalar, or None without grad: nothing trains on it then)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, e, f = cfg.hidden_size, cfg.moe_experts, cfg.expert_size
        self.top_k, self.init_std = cfg.moe_top_k, cfg.init_std
        self.router = nn.Linear(d, e, bias=False)
        # Expert weights stacked (E, ...): one parameter each, a row per expert.
        self.gate_proj = nn.Parameter(torch.empty(e, f, d))  # (E, F, D), as nn.Linear stores (out, in)
        self.up_proj = nn.Parameter(torch.empty(e, f, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, f))  # (E, D, F)
        self.init_parameters()

    def init_parameters(self) -> None:
        for w in (self.router.weight, self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(w, mean=0.0, std=self.init_std)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> router probabilities (N, E) fp32, chosen weights (N, k) and chosen experts (N, k)."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return probs, weights, experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (..., D) -> (output (..., D), load-balancing loss () or None without grad)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        probs, weights, experts = self.route(x)
        out = torch.zeros_like(x)
        flat_expert = experts.reshape(-1)  # (N·k,): assignment a = token a // k, its (a % k)-th choice
        order = flat_expert.argsort(stable=True)  # assignments grouped by expert
        counts = torch.bincount(flat_expert, minlength=self.gate_proj.shape[0]).tolist()
        token_of = order // self.top_k  # (N·k,) token of each grouped assignment
        weight_of = weights.reshape(-1)[order].to(x.dtype)
        start = 0
        for e, n in enumerate(counts):  # dropless: every assignment is computed, none padded
            if n == 0:
                continue
            rows = token_of[start : start + n]
            h = x[rows]  # (n, D)
            y = F.linear(F.silu(F.linear(h, self.gate_proj[e])) * F.linear(h, self.up_proj[e]), self.down_proj[e])
            out.index_add_(0, rows, y * weight_of[start : start + n, None])
            start += n
        aux = balance_loss(probs, experts) if torch.is_grad_enabled() else None
        return out.reshape(shape), aux


def balance_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's load-balancing loss (Fedus et al. 2021, eq. 4; with top-k as in OLMoE):
    ``E · sum_e f_e · P_e``, f_e = share of the N·k assignments that went to expert e (not differentiable),
    P_e = mean router probability of e over the N tokens. 1 when perfectly balanced, E when all on one expert.
    probs (N, E), experts (N, k)."""
    n_experts = probs.shape[-1]
    share = torch.bincount(experts.reshape(-1), minlength=n_experts).to(probs.dtype) / experts.numel()
    return n_experts * (share * probs.mean(0)).sum()


def moe_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The plain twin of ``MoE.forward``: one token at a time, each through its k experts (slow; tests only)."""
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for token in flat:
        probs = torch.softmax(moe.router(token).float(), dim=-1)
        weights, experts = probs.topk(moe.top_k)
        y = torch.zeros_like(token)
        for w, e in zip(weights, experts.tolist()):
            hidden = F.silu(moe.gate_proj[e] @ token) * (moe.up_proj[e] @ token)
            y = y + w.to(token.dtype) * (moe.down_proj[e] @ hidden)
        rows.append(y)
    return torch.stack(rows).reshape(x.shape)
