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
    # None: hidden and final hold every position (B, T, D). A (B, T) bool mask: the trunk ran its last block
    # only where it is true (``Transformer.trunk(rows=...)``), and hidden / final are (n, D), those positions in
    # row-major order (``hidden[i]`` is position ``rows.nonzero()[i]``); last_input stays (B, T, D).
    rows: torch.Tensor | None = None
    # The trunk's auxiliary training loss of this forward, a scalar: an MoE trunk's load-balancing loss, the mean
    # over its MoE layers (model/moe.py); None for a dense or memory trunk, and without grad. Carried here, not
    # on the modules, so each forward's loss belongs to that forward (activation checkpointing recomputes blocks).
    aux_loss: torch.Tensor | None = None


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

    def trunk(self, input_ids: torch.Tensor, caches: list[KVCache] | None = None,
              rows: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              positions: torch.Tensor | None = None) -> TrunkOutput:
        """input_ids (B, T) -> TrunkOutput. With ``caches`` (one per layer) positions continue after the cache:
        per row when the caches are on their per-row path (then ``cos``/``sin`` are (B, 1, T, Dh)).

        ``rows`` (B, T) bool: the positions whose outputs the caller reads (a loss mask). Then the last block
        runs its queries, MLP and residual, and the final norm, only at the positions any row needs (its keys
        and values still come from every position): the same numbers at those rows, for a fraction of the last
        block's cost (star graph: 4 answer positions of 24). ``TrunkOutput.rows`` says whether it was used: only
        without caches and when the last block is dense (an MoE's balance loss reads every token).
        ``TrunkOutput.aux_loss``: the MoE layers' mean load-balancing loss of this forward (None without MoE).

        ``mask`` / ``positions``: an explicit attention mask and per-token position ids, as ``trunk_embeds`` (which
        this then is, on the token embeddings; not with ``caches`` or ``rows``)."""
        if mask is not None or positions is not None:
            if caches is not None or rows is not None:
                raise ValueError("trunk: mask / positions are for a forward without caches and without rows")
            return self.trunk_embeds(self.embed_tokens(input_ids), mask, positions)
        if rows is not None and caches is None and self.cfg.ffn == "dense":
            return self._trunk_rows(input_ids, rows)
        offset = caches[0].offset if caches else 0
        cos, sin = self.rotary(input_ids.shape[1], input_ids.device, offset)
        # Per-row caches: one mask and write index for all layers (their caches hold the same lengths).
        step = caches[0].row_step(input_ids.shape[1]) if caches else None
        x = self.embed_tokens(input_ids)  # (B, T, D)
        last_input = x
        aux = []  # each MoE layer's load-balancing loss, a scalar
        for i, layer in enumerate(self.layers):
            last_input = x
            x, layer_aux = layer(x, cos, sin, caches[i] if caches else None, step, self.memory_table, with_aux=True)
            if layer_aux is not None:
                aux.append(layer_aux)
        return TrunkOutput(hidden=self.norm(x), final=x, last_input=last_input, cos=cos, sin=sin,
                           aux_loss=torch.stack(aux).mean() if aux else None)

    def trunk_embeds(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                     positions: torch.Tensor | None = None) -> TrunkOutput:
        """The trunk over input embeddings x (B, S, D) rather than ids: token embeddings, or token embeddings
        interleaved with learned vectors that are not in the vocabulary (MuToR's registers, objectives/mutor.py).

        ``mask``: a boolean attention mask, (S, S) or (B, 1, S, S), True = query i may attend key j, for every layer;
        None: causal. ``positions`` (B, S) long: each input's RoPE position id (repeats and any order allowed);
        None: 0 .. S-1. With both None this is ``trunk(ids)`` on ``x = embed_tokens(ids)``, the same numbers. No KV
        cache: a training / scoring pass. ``cos`` / ``sin`` of the output are (B, 1, S, Dh) with ``positions``."""
        b, s, _ = x.shape
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape not in ((s, s), (b, 1, s, s)):
                raise ValueError(f"trunk_embeds: mask must be bool ({s}, {s}) or ({b}, 1, {s}, {s}), got "
                                 f"{mask.dtype} {tuple(mask.shape)}")
        if positions is None:
            cos, sin = self.rotary(s, x.device)  # (S, Dh)
        elif positions.shape != (b, s):
            raise ValueError(f"trunk_embeds: positions must be ({b}, {s}), got {tuple(positions.shape)}")
        else:
            cos, sin = self.rotary.at(positions)  # (B, 1, S, Dh)
        last_input, aux = x, []
        for layer in self.layers:
            last_input = x
            x, layer_aux = layer(x, cos, sin, table=self.memory_table, with_aux=True, mask=mask)
            if layer_aux is not None:
                aux.append(layer_aux)
        return TrunkOutput(hidden=self.norm(x), final=x, last_input=last_input, cos=cos, sin=sin,
                           aux_loss=torch.stack(aux).mean() if aux else None)

    def _trunk_rows(self, input_ids: torch.Tensor, rows: torch.Tensor) -> TrunkOutput:
        cos, sin = self.rotary(input_ids.shape[1], input_ids.device, 0)
        x = self.embed_tokens(input_ids)  # (B, T, D)
        for layer in self.layers[:-1]:
            x = layer(x, cos, sin)
        cols = rows.any(0).nonzero().squeeze(1)  # (n,) ascending: positions some row needs
        final = self.layers[-1](x, cos, sin, cols=cols)[rows[:, cols]]  # (B, n, D) -> (m, D), row-major
        return TrunkOutput(hidden=self.norm(final), final=final, last_input=x, cos=cos, sin=sin, rows=rows)

    def forward(self, input_ids: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V): the inference path (MTP head 0 / DS-MTP main model only)."""
        return self.lm_head(self.trunk(input_ids, caches).hidden)

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]
