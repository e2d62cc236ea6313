"""Model FLOPs per token and accelerator peaks, for model FLOP utilisation (MFU).

Per trained token (forward + backward = 3 × the forward's 2 FLOPs per multiply-add):

    flops = 6 · (P_blocks + P_heads) + 6 · L · T · D

* P_blocks: parameters of every transformer block and projection that runs on each token: the trunk's
  blocks and the objectives' extra blocks (MTP heads, DS-MTP modules with their 2D -> D projections).
  The input embedding is a lookup, not a matmul, and is left out.
* P_heads: V · D for each application of an output head: the NTP head, the TOP head, and the shared head once
  more per extra MTP head / DS-MTP module ("heads included"). Each objective declares its share
  (``Objective.compute``).
* 6 · L · T · D: attention scores and weighted values (2 · 2 · T · D per layer forward, causal half, × 3 for
  the backward), L counting every block, head blocks included; T the sequence length, D the hidden size.

Sparse trunks (``model.ffn``, issue 16) count what a token activates: an MoE layer its router and k of its E
experts; an UltraMemV2 layer all of its own weights (every key is scored) plus the K retrieved rows of the shared
value table (values and pre-values), and the K x K candidate scores (r + 1)·r·K² multiply-adds on top
(``activated_parameters``).

For NTP and TOP this is exactly the definition of docs/baselines.md ("6·(non-embedding params +
heads) + 6·L·T·H per token against 790 TFLOP/s"). Norm weights are counted as parameters (negligible).
"""

from __future__ import annotations

import torch
from torch import nn

# Dense bf16 peak FLOP/s by GPU name (first match wins). H100/H200: the bf16 matmul rate measured in
# docs/baselines.md (790 of 990 datasheet TFLOP/s); the others: datasheet dense bf16.
PEAK_TFLOPS = (("H200", 790.0), ("H100", 790.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
               ("A10", 125.0), ("4090", 165.0), ("3090", 71.0))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _active_layers(model, candidates: bool = False) -> int:
    """Parameters of the trunk's blocks that one token uses (module doc), the retrieved table rows included;
    with ``candidates`` also UltraMemV2's K x K candidate-score multiply-adds (not parameters, but per token)."""
    cfg = model.cfg
    active = _count(model.layers)
    if cfg.ffn == "moe":
        per_expert = 3 * cfg.hidden_size * cfg.expert_size
        active -= len(model.layers) * (cfg.moe_experts - cfg.moe_top_k) * per_expert
    if cfg.ffn == "ultramem":
        knn = cfg.mem_knn
        rows = knn * (cfg.mem_vdim + cfg.mem_pre_vdim)  # retrieved values and pre-values
        scores = (cfg.mem_rank + 1) * cfg.mem_rank * knn * knn if candidates else 0  # the K x K exact scores
        active += len(model.layers) * (rows + scores)
    return active


def activated_parameters(model) -> int:
    """Parameters of a ``Transformer`` one token uses: every weight of a dense model (the input embedding and a
    tied head once); an MoE trunk less its unchosen experts; an UltraMemV2 trunk with only the retrieved rows of
    the value table. Comparable with ``num_parameters()``."""
    total = model.num_parameters()
    table = model.memory_table
    if table is not None:
        total -= _count(table)
    return total - _count(model.layers) + _active_layers(model)


def flops_per_token(lm, seq_len: int) -> float:
    """Training FLOPs per token of a ``TrainableLM`` at sequence length ``seq_len`` (see the module doc)."""
    model = lm.model
    cfg = model.cfg
    v, d = cfg.vocab_size, cfg.hidden_size
    blocks = _active_layers(model, candidates=True) + _count(model.norm)
    layers = len(model.layers)
    head_uses = 1  # the NTP head
    for obj in lm.objectives.values():
        extra = obj.compute()  # what each objective adds (Objective.compute)
        blocks += extra.block_params
        layers += extra.blocks
        head_uses += extra.head_uses
    return 6.0 * (blocks + head_uses * v * d) + 6.0 * layers * seq_len * d


def peak_flops(device: torch.device, tflops: float | None = None) -> float | None:
    """The accelerator's peak FLOP/s: ``tflops`` if given, else looked up by CUDA device name; None if unknown."""
    if tflops is not None:
        return tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value * 1e12
    return None
