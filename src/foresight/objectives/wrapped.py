"""foresight's objectives on a transformers model (``foresight.wrap``): the same classes, with the heads built
from the model's own parts (``foresight.wrapper.parts.Parts``) instead of foresight's trunk.

An objective that supports ``foresight.wrap`` says so with ``Objective.on_parts``, which builds its class here.
Each class subclasses the foresight objective and ``OnParts`` and overrides only what touches the model:
building the heads, running them, and the module ``ForesightModel.heads`` shows. Targets, counts, loss sums,
the per-head ``forward_backward`` (Meta MTP §2) and DS-MTP's exact module-by-module backward are inherited
unchanged, so the loss math lives in one place (``foresight.objectives``, ``foresight.ops``).

- NTP: cross-entropy of the model's own output head (soft cap included) against ``labels`` shifted by one.
- TOP (TOP paper §3): the inherited ``TOP``; its V×D head reads the final normed hidden state.
- MTP (Meta MTP §2): heads 1..n-1 are extra decoder layers of the model's own class, in parallel with its
  last layer, sharing final norm and output head.
- DS-MTP (DeepSeek-V3 §2.2): D modules, each two norms of the model's norm class, a 2D→D projection and a
  decoder layer of the model's own class.
- FSP-BCE (Mahajan et al. 2025 §3): the inherited ``FSP``; its V×D head reads the final normed hidden state.
- NextLat (Teoh et al. 2025 §3): the inherited ``NextLat``; ψ reads the last layer's output and the embedding.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from foresight.objectives.base import IGNORE_INDEX, Batch, LossOutput, Objective, shifted_labels
from foresight.objectives.dsmtp import DSMTP, DSMTPConfig
from foresight.objectives.fsp import FSP
from foresight.objectives.mtp import MTP, MTPConfig
from foresight.objectives.nextlat import LatentDynamics, NextLat
from foresight.objectives.ntp import NTP
from foresight.objectives.top import TOP
from foresight.ops import linear_cross_entropy

if TYPE_CHECKING:  # (annotations only: objectives/ does not import the wrapper package)
    from foresight.wrapper.parts import Parts, WrapTrunkOutput


class OnParts:
    """What ``foresight.wrap`` asks of an objective built by ``Objective.on_parts``, besides the objective's own
    protocol: ``forward(out, batch, parts)`` / ``forward_backward(..., parts, ...)`` read a ``WrapTrunkOutput``
    and the model's ``Parts`` where foresight's objectives read a ``TrunkOutput`` and the ``Transformer``, and
    ``head_module(parts)`` is what users reach as ``ForesightModel.heads[key]``. (Heads on transformers models do
    not train on foresight's cached trunk states.)"""

    cached_heads = False

    def head_module(self, parts: Parts) -> nn.Module:
        raise NotImplementedError


def head_loss_sum(parts: Parts, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the model's output head on h (B, T, D) against labels (B, T), never N×V logits."""
    return linear_cross_entropy(h.reshape(-1, h.shape[-1]), parts.lm_head.weight, labels.reshape(-1),
                                softcap=parts.softcap).sum()


def _fresh_norm(parts: Parts) -> nn.Module:
    """A norm of the model's final-norm class (so Gemma's 1 + w convention holds), freshly initialised."""
    norm = copy.deepcopy(parts.norm)
    init = getattr(parts.model, "_init_weights", None)
    if init is not None:
        init(norm)
    else:
        nn.init.ones_(norm.weight)
    return norm


class WrapNTP(OnParts, NTP):
    """Next-token cross-entropy with the model's own head: equals the model's ``loss`` for the same labels (it
    reads the labels as given: ``next_token``)."""

    def head_module(self, parts: Parts) -> nn.Module:
        return parts.lm_head

    def forward(self, out: WrapTrunkOutput, batch: Batch, parts: Parts) -> LossOutput:
        labels = shifted_labels(batch, 0)  # (B, T)
        return LossOutput(head_loss_sum(parts, out.hidden, labels), (labels != IGNORE_INDEX).sum())


class WrapMTP(OnParts, MTP):
    """Meta MTP-n: ``heads[k - 1]`` (k = 1..n-1) is a decoder layer of the model's class reading the input of
    the model's last layer; its output goes through the model's final norm and output head to predict x[t+1+k]."""

    def __init__(self, cfg: MTPConfig, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        self.heads = nn.ModuleList(parts.new_layer() for _ in range(cfg.n - 1))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.heads  # n - 1 decoder layers

    def _head_sum(self, k: int, out: WrapTrunkOutput, batch: Batch, parts: Parts) -> torch.Tensor:
        h = parts.norm(parts.run_layer(self.heads[k - 1], out.last_input, out.layer_kwargs))  # (B, T, D)
        return head_loss_sum(parts, h, shifted_labels(batch, k))


class WrapDSMTPModule(nn.Module):
    """One DS-MTP module: ``hnorm``, ``enorm``, ``eh_proj`` (2D -> D), ``layer`` (the model's decoder-layer
    class), and with ``final_norm: own`` its own ``norm`` before the shared output head."""

    def __init__(self, cfg: DSMTPConfig, parts: Parts) -> None:
        super().__init__()
        d = parts.hidden_size
        self.hnorm, self.enorm = _fresh_norm(parts), _fresh_norm(parts)
        ref = parts.lm_head.weight
        self.eh_proj = nn.Linear(2 * d, d, bias=cfg.proj_bias, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.eh_proj.weight, std=getattr(parts.config, "initializer_range", 0.02))
        if self.eh_proj.bias is not None:
            nn.init.zeros_(self.eh_proj.bias)
        self.layer = parts.new_layer()
        self.norm = _fresh_norm(parts) if cfg.final_norm == "own" else None
        self.hidden_first = cfg.concat == "hidden_first"

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, parts: Parts, layer_kwargs: dict) -> torch.Tensor:
        h, e = self.hnorm(h_prev), self.enorm(emb)  # (B, T, D) each
        joined = torch.cat([h, e] if self.hidden_first else [e, h], dim=-1)  # (B, T, 2D)
        return parts.run_layer(self.layer, self.eh_proj(joined), layer_kwargs)


class WrapDSMTP(OnParts, DSMTP):
    """DeepSeek-V3 §2.2 on the model: module k reads h_{k-1} and the model's embedding of input x[t+k]."""

    def __init__(self, cfg: DSMTPConfig, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        self.layers = nn.ModuleList(WrapDSMTPModule(cfg, parts) for _ in range(cfg.depth))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.layers  # D modules

    def _step(self, k: int, h: torch.Tensor, out: WrapTrunkOutput, batch: Batch, parts: Parts) -> torch.Tensor:
        # The embedding of the *input* token x[t+k] (known even where labels are -100, e.g. a masked prompt);
        # positions past the sequence read id 0, and their labels are ignored.
        ids, t = out.input_ids, out.input_ids.shape[1]
        shifted = torch.zeros_like(ids)  # (B, T)
        shifted[:, : max(0, t - k)] = ids[:, k:]
        return self.layers[k - 1](h, parts.embed_tokens(shifted), parts, out.layer_kwargs)

    def _depth_sum(self, k: int, h: torch.Tensor, batch: Batch, parts: Parts) -> torch.Tensor:
        module = self.layers[k - 1]
        norm = module.norm if module.norm is not None else parts.norm
        return head_loss_sum(parts, norm(h), shifted_labels(batch, k))


class WrapTOP(OnParts, TOP):
    """TOP paper §3: the inherited objective; its head ``W_top`` (V×D, untied, no soft cap) is initialised
    with the model's ``initializer_range``."""

    def __init__(self, cfg, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        ref = parts.lm_head.weight
        self.head = nn.Linear(parts.hidden_size, parts.vocab_size, bias=False, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.head.weight, std=getattr(parts.config, "initializer_range", 0.02))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.head  # W_top (V×D)


class WrapFSP(OnParts, FSP):
    """FSP-BCE (Mahajan et al. 2025 §3): the inherited objective; its head ``W_fsp`` (V×D, untied, no soft cap)
    reads the final normed hidden state and is initialised with the model's ``initializer_range``."""

    def __init__(self, cfg, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        ref = parts.lm_head.weight
        self.head = nn.Linear(parts.hidden_size, parts.vocab_size, bias=False, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.head.weight, std=getattr(parts.config, "initializer_range", 0.02))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.head  # W_fsp (V×D)


class WrapNextLat(OnParts, NextLat):
    """NextLat (Teoh et al. 2025 §3): the inherited objective on the model's last-layer outputs, embedding, final
    norm, output head and soft cap; ψ is created in the model's dtype on its device."""

    def __init__(self, cfg, parts: Parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        ref = parts.lm_head.weight
        eps = getattr(parts.norm, "variance_epsilon", getattr(parts.norm, "eps", 1e-6))
        self.dynamics = LatentDynamics(parts.hidden_size, cfg.hidden_mult, eps).to(device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.dynamics.up.weight, std=getattr(parts.config, "initializer_range", 0.02))

    def head_module(self, parts: Parts) -> nn.Module:
        return self.dynamics  # ψ
