"""The trunk: token embedding, ``n_layers`` blocks, final RMSNorm and the next-token head.

Objectives (TOP head, MTP heads, DS-MTP modules) are separate modules that read this trunk's outputs and
use its shared parts (embedding, final norm, output head); see ``foresight.objectives``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from foresight.model.config import ModelConfig
from foresight.model.layers import Block, KVCache, RMSNorm, Rotary, init_weights
from foresight.model.moe import MoE
from foresight.model.ultramem import MemoryTable, UltraMem


@dataclass
class TrunkOutput:
    """What a forward pass of the trunk leaves for the objectives. All (B, T, D)."""

    hidden: torch.Tensor  # after the final norm: what the NTP and TOP heads read
    final: torch.Tensor  # output of the last block, before the final norm (DS-MTP may start here)
    last_input: torch.Tensor  # input of the last block (MTP's parallel heads branch here, Meta MTP §2)
    cos: torch.Tensor  # RoPE tables (T, Dh) for these positions, for head blocks; (B, 1, T, Dh) per row
    sin: torch.Tensor


class Transformer(nn.Module):
    """Llama-family decoder (RMSNorm, RoPE, GQA through SDPA, SwiGLU), layout-compatible with HF Llama/Qwen2."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, layer=i) for i in range(cfg.n_layers))
        # UltraMemV2: one value table shared by every layer's memory (each addresses its own region).
        self.memory_table = MemoryTable(cfg) if cfg.ffn == "ultramem" else None
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_seq_len, cfg.rope_scaling)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self, self.cfg.init_std)
        for m in self.modules():  # MoE experts and memory layers have their own initialisation
            if isinstance(m, (MoE, UltraMem, MemoryTable)):
                m.init_parameters()
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied head counts once); optionally without the input embedding."""
        seen = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in seen.values())
        if exclude_embeddings:
            total -= self.embed_tokens.weight.numel()
        return total

    def trunk(self, input_ids: torch.Tensor, caches: list[KVCache] | None = None) -> TrunkOutput:
        """input_ids (B, T) -> TrunkOutput. With ``caches`` (one per layer) positions continue after the cache:
        per row when the caches are on their per-row path (then ``cos``/``sin`` are (B, 1, T, Dh))."""
        offset = caches[0].offset if caches else 0
        cos, sin = self.rotary(input_ids.shape[1], input_ids.device, offset)
        # Per-row caches: one mask and write index for all layers (their caches hold the same lengths).
        step = caches[0].row_step(input_ids.shape[1]) if caches else None
        x = self.embed_tokens(input_ids)  # (B, T, D)
        last_input = x
        for i, layer in enumerate(self.layers):
            last_input = x
            x = layer(x, cos, sin, caches[i] if caches else None, step, self.memory_table)
        return TrunkOutput(hidden=self.norm(x), final=x, last_input=last_input, cos=cos, sin=sin)

    def balance_loss(self) -> torch.Tensor | None:
        """Mean over MoE layers of the load-balancing loss of the latest forward with grad (None without MoE)."""
        losses = [layer.mlp.balance_loss for layer in self.layers
                  if isinstance(layer.mlp, MoE) and layer.mlp.balance_loss is not None]
        return torch.stack(losses).mean() if losses else None

    def forward(self, input_ids: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V): the inference path (MTP head 0 / DS-MTP main model only)."""
        return self.lm_head(self.trunk(input_ids, caches).hidden)

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]
