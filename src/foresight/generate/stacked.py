"""Several transformer blocks of one shape applied to the same input as one batched computation.

Drafting with MTP heads runs n-1 blocks on the same ``last_input`` at every step. On a CPU (and for small
models anywhere) the cost of a block on a few positions is mostly per-operator overhead, so running the heads
one after another costs about n-1 times one head. Stacking their weights and using batched matrix products
(``torch.bmm``: one call per projection for all heads) pays that overhead once. This is a drafting fast path:
the per-head ``Block`` modules stay the reference (``MTPDrafter(stacked=False)``), and the tests check that
both give the same drafts. Weights are copied when the stack is built: rebuild it after changing them. Only the
norms, projections and MLP are batched here; attention is ``layers.attend``, the blocks' own, on (n, B) leading dims.

Shapes: n heads, B batch, m new positions, D hidden, H query heads, G key/value heads, Dh head dim,
I SwiGLU width, KV = G·Dh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from foresight.model import KVCache
from foresight.model.layers import attend


class StackedBlocks:
    """``Block``s of one config run as one computation on a shared input; one KVCache holds all heads' keys."""

    def __init__(self, blocks) -> None:
        first = blocks[0].self_attn
        self.n = len(blocks)
        self.n_heads, self.n_kv_heads, self.head_dim = first.n_heads, first.n_kv_heads, first.head_dim
        self.eps1, self.eps2 = blocks[0].input_layernorm.eps, blocks[0].post_attention_layernorm.eps

        def stack(get) -> torch.Tensor:
            return torch.stack([get(b).detach() for b in blocks])

        def qkv(b):
            a = b.self_attn
            return torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])

        self.ln1 = stack(lambda b: b.input_layernorm.weight)[:, None, :]  # (n, 1, D)
        self.ln2 = stack(lambda b: b.post_attention_layernorm.weight)[:, None, :]
        self.w_qkv = stack(qkv).transpose(1, 2).contiguous()  # (n, D, D + 2KV)
        self.b_qkv = None
        if first.q_proj.bias is not None:
            self.b_qkv = stack(lambda b: torch.cat([b.self_attn.q_proj.bias, b.self_attn.k_proj.bias,
                                                    b.self_attn.v_proj.bias]))[:, None, :]  # (n, 1, D + 2KV)
        self.w_o = stack(lambda b: b.self_attn.o_proj.weight).transpose(1, 2).contiguous()  # (n, D, D)
        gate_up = stack(lambda b: torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight]))  # (n, 2I, D)
        self.w_gu = gate_up.transpose(1, 2).contiguous()  # (n, D, 2I)
        self.w_down = stack(lambda b: b.mlp.down_proj.weight).transpose(1, 2).contiguous()  # (n, I, D)

    @staticmethod
    def _norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm as ``foresight.model.RMSNorm`` computes it (fp32 at least), with per-head weights."""
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        return w * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """x (B, m, D) -> (n, B, m, D); ``cache`` holds (n·B, G, T, Dh) keys and values, row index head·B + b
        (a per-row cache: (n·B,) lengths, each row's repeated for every head)."""
        n, (b, m, d) = self.n, x.shape
        kv = self.n_kv_heads * self.head_dim
        xs = x.reshape(1, b * m, d).expand(n, b * m, d)  # the same input for every head
        h = self._norm(xs, self.ln1, self.eps1)
        qkv = torch.bmm(h, self.w_qkv) if self.b_qkv is None else torch.baddbmm(self.b_qkv, h, self.w_qkv)
        q, k, v = qkv.split([d, kv, kv], dim=-1)  # (n, B·m, ·)
        q = q.reshape(n, b, m, self.n_heads, self.head_dim).transpose(2, 3)  # (n, B, H, m, Dh)
        k = k.reshape(n, b, m, self.n_kv_heads, self.head_dim).transpose(2, 3)  # (n, B, G, m, Dh)
        v = v.reshape(n, b, m, self.n_kv_heads, self.head_dim).transpose(2, 3)
        # RoPE tables (m, Dh), or per row (B, 1, m, Dh), broadcast over the n heads' copies of the batch; the
        # cache's rows are head·B + b (a per-row cache: (n·B,) lengths).
        y = attend(q, k, v, cos, sin, cache).view(n, b * m, d)
        x2 = xs + torch.bmm(y, self.w_o)
        gate, up = torch.bmm(self._norm(x2, self.ln2, self.eps2), self.w_gu).chunk(2, dim=-1)  # (n, B·m, I) each
        out = x2 + torch.bmm(F.silu(gate) * up, self.w_down)
        return out.reshape(n, b, m, d)
