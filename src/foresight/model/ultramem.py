"""UltraMemV2 memory layer (Huang et al. 2025, "UltraMemV2: Memory Networks Scaling to 120B Parameters with
Superior Long-Context Learning", arXiv 2508.18756; docs/memory.md).

Placement: a memory layer in every block, parallel to the FFN on the same normed input,
``h = norm(x); x = x + ffn(h) + mem(h)``. One value table (``MemoryTable``) is shared by all layers; layer l
addresses its own region of ``S = (n/E)²`` rows starting at ``offsets[l]`` (``table_layout``).

Retrieval, Tucker-decomposed query-key retrieval (TDQKR, from UltraMem v1, as V2 uses it):
  q = LN(W_q h) split into a row half and a column half (kdim/2 each);
  keys K (2, n, r, kdim/2) through LN; per-rank scores s_row, s_col (n, r) = <q_half, K[half, i, m]>;
  the score of grid cell (i, j) is ``sum_m s_row(i)ᵀ C_m s_col(j)`` with cores C_m (r, r);
  rows and columns are pre-selected (top-knn each) with the rank-1 vectors a, b of the summed core
  (SVD: C ≈ σ₁ u₁ v₁ᵀ, a = √σ₁ u₁, b = √σ₁ v₁), then the exact score is taken over the knn² candidate pairs
  and the top knn of those are kept. The n² grid is never materialised.
Addressing: grid cell g = i·n + j -> a fixed random permutation of the grid, modulo S (implicit value
expansion: E² cells share one value), + the layer's offset.
Value processing (PEER-style): p = W_pre h, g_k = <p, P[idx_k]>, out = W_o sum_k g_k · score_k · V[idx_k],
with the weighted sums taken EmbeddingBag-style (no (N, knn, vdim) copy is kept for the backward).

Shapes: N tokens, D hidden, n keys per axis, r Tucker rank, M cores, kh = kdim/2, K = knn.
``ultramem_reference`` and ``brute_force_retrieval`` are the plain twins the tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from foresight.model.config import ModelConfig


def table_layout(cfg: ModelConfig) -> tuple[int, int, list[int]]:
    """(region S, table rows, offset of each layer's region) for ``cfg.n_layers`` memory layers.

    Each layer addresses a contiguous region of S = (n/E)² rows, which is the fraction ``mem_share_ratio`` of
    the table: the table has min(ceil(S / ratio), L·S) rows and the L regions are spread evenly over it, the
    first at row 0 and the last ending at the last row. Ratio 1: every layer addresses the whole table; ratio
    1/L or less: disjoint regions (the table never grows past L·S, so no row goes unused)."""
    region = (cfg.mem_keys // cfg.mem_expand) ** 2
    layers = cfg.n_layers
    rows = min(math.ceil(region / cfg.mem_share_ratio - 1e-9), layers * region)
    offsets = [round(i * (rows - region) / (layers - 1)) if layers > 1 else 0 for i in range(layers)]
    return region, rows, offsets


class MemoryTable(nn.Module):
    """The value table shared by every memory layer: values V (rows, vdim) and pre-values P (rows, pre_vdim)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _, rows, _ = table_layout(cfg)
        self.values = nn.Parameter(torch.empty(rows, cfg.mem_vdim))
        self.pre_values = nn.Parameter(torch.empty(rows, cfg.mem_pre_vdim))
        self.init_parameters()

    def init_parameters(self) -> None:
        nn.init.normal_(self.values, std=0.02)  # the paper code's initialisation (docs/memory.md)
        nn.init.normal_(self.pre_values, std=0.02)


class UltraMem(nn.Module):
    """One layer's UltraMemV2 memory (see the module docstring); the values live in the shared ``MemoryTable``
    passed to ``forward``."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.n, self.knn, self.rank = cfg.mem_keys, cfg.mem_knn, cfg.mem_rank
        kh = cfg.mem_kdim // 2
        self.kh, self.hidden, self.vdim = kh, cfg.hidden_size, cfg.mem_vdim
        self.region, _, offsets = table_layout(cfg)
        self.offset = offsets[layer]
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.mem_kdim, bias=False)
        self.q_norm = nn.Parameter(torch.empty(2, kh))  # LN weights of the row and column query halves
        self.keys = nn.Parameter(torch.empty(2, self.n, self.rank, kh))  # (row/col, n, r, kh)
        self.k_norm = nn.Parameter(torch.empty(2, kh))
        self.cores = nn.Parameter(torch.empty(cfg.mem_cores, self.rank, self.rank))  # C_m (M, r, r)
        self.pre_proj = nn.Linear(cfg.hidden_size, cfg.mem_pre_vdim, bias=False)  # W_pre
        self.o_proj = nn.Linear(cfg.mem_vdim, cfg.hidden_size, bias=False)  # W_o
        # The fixed random permutation of the grid (pure function of the layer index, so not saved).
        perm = torch.randperm(self.n * self.n, generator=torch.Generator().manual_seed(layer), device="cpu")
        self.register_buffer("perm", perm, persistent=False)
        self.init_parameters()

    def init_parameters(self) -> None:
        """The initialisation of the paper's code (docs/memory.md): LN weights 1/kdim^0.4, W_q and keys
        N(0, 1/√kdim), W_o N(0, 1/√vdim) (one value projection), W_pre N(0, 1/√D), cores U(0, 1); kdim is the
        width one LN normalises."""
        nn.init.constant_(self.q_norm, self.kh ** -0.4)
        nn.init.constant_(self.k_norm, self.kh ** -0.4)
        nn.init.normal_(self.q_proj.weight, std=self.kh ** -0.5)
        nn.init.normal_(self.keys, std=self.kh ** -0.5)
        nn.init.normal_(self.o_proj.weight, std=self.vdim ** -0.5)
        nn.init.normal_(self.pre_proj.weight, std=self.hidden ** -0.5)
        nn.init.uniform_(self.cores, 0.0, 1.0)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> per-rank row and column scores (N, n, r) each, and the summed core (r, r)."""
        q = self.q_proj(x).view(-1, 2, self.kh)
        q = F.layer_norm(q, (self.kh,)) * self.q_norm  # (N, 2, kh)
        k = F.layer_norm(self.keys, (self.kh,)) * self.k_norm[:, None, None, :]  # (2, n, r, kh)
        s_row = torch.einsum("nd,ird->nir", q[:, 0], k[0].to(q.dtype))
        s_col = torch.einsum("nd,ird->nir", q[:, 1], k[1].to(q.dtype))
        return s_row, s_col, self.cores.sum(0)

    def retrieve(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) -> grid cells (N, K) long (i·n + j) and their exact scores (N, K), best first."""
        s_row, s_col, core = self.scores(x)
        return tdqkr(s_row, s_col, core.to(s_row.dtype), self.knn)

    def address(self, cells: torch.Tensor) -> torch.Tensor:
        """Grid cells -> rows of the shared table: permuted, folded onto the S-row region, offset."""
        return self.offset + self.perm[cells] % self.region

    def forward(self, h: torch.Tensor, table: MemoryTable) -> torch.Tensor:
        shape = h.shape
        x = h.reshape(-1, shape[-1])  # (N, D)
        cells, score = self.retrieve(x)
        idx = self.address(cells)  # (N, K) table rows
        gate = gather_dot(self.pre_proj(x), table.pre_values, idx)  # (N, K): g_k = <p, P[idx_k]>
        weight = (gate * score.to(gate.dtype)).to(table.values.dtype)
        v = F.embedding_bag(idx, table.values, per_sample_weights=weight, mode="sum")  # (N, vdim)
        return self.o_proj(v.to(h.dtype)).reshape(shape)


def rank1(core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 factors a, b (r,) of a core (r, r) by SVD, a bᵀ = σ₁ u₁ v₁ᵀ, signed so that a sums >= 0
    (the product is unchanged; the pre-selection ranks rows by s_row·a, so a must not point away)."""
    u, s, vh = torch.linalg.svd(core.detach().double())
    a, b = u[:, 0] * s[0].sqrt(), vh[0] * s[0].sqrt()
    if a.sum() < 0:
        a, b = -a, -b
    return a.to(core.dtype), b.to(core.dtype)


def tdqkr(s_row: torch.Tensor, s_col: torch.Tensor, core: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TDQKR top-knn: s_row, s_col (N, n, r), core (r, r) -> cells (N, K) and scores (N, K), best first.

    Pre-selection (no gradient: indices only) by the rank-1 approximation of the core, then exact scores over
    the K x K candidate pairs; only (N, K, K) is built, never (N, n, n)."""
    n, r = s_row.shape[1], s_row.shape[2]
    a, b = rank1(core)
    with torch.no_grad():
        rows = (s_row @ a).topk(knn, dim=-1).indices  # (N, K)
        cols = (s_col @ b).topk(knn, dim=-1).indices
    sr = s_row.gather(1, rows[..., None].expand(-1, -1, r))  # (N, K, r)
    sc = s_col.gather(1, cols[..., None].expand(-1, -1, r))
    pair = (sr @ core) @ sc.transpose(1, 2)  # (N, K, K): sum_m s_row(i)ᵀ C_m s_col(j) for candidate i, j
    score, flat = pair.flatten(1).topk(knn, dim=-1)  # (N, K)
    i = rows.gather(1, torch.div(flat, knn, rounding_mode="floor"))
    j = cols.gather(1, flat % knn)
    return i * n + j, score


class _GatherDot(torch.autograd.Function):
    """g[t, k] = <p[t], table[idx[t, k]]> without keeping the gathered (N, K, d) rows for the backward: the
    backward takes grad_p as an EmbeddingBag of the table rows and scatters grad_table with index_add_."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, table, idx)
        ctx.p_dtype = p.dtype
        with torch.autocast(p.device.type, enabled=False):
            return torch.einsum("nd,nkd->nk", p.to(table.dtype), F.embedding(idx, table))  # transient (N, K, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, table, idx = ctx.saved_tensors
        grad = grad.to(table.dtype)
        grad_p = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_p = F.embedding_bag(idx, table, per_sample_weights=grad, mode="sum").to(ctx.p_dtype)
        if ctx.needs_input_grad[1]:
            rows = grad[..., None] * p.to(table.dtype)[:, None, :]  # (N, K, d), only inside this backward
            grad_table = torch.zeros_like(table).index_add_(0, idx.reshape(-1), rows.reshape(-1, table.shape[1]))
        return grad_p, grad_table, None


def gather_dot(p: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """p (N, d), table (R, d), idx (N, K) -> (N, K): <p[t], table[idx[t, k]]>."""
    return _GatherDot.apply(p, table, idx)


# ------------------------------------------------------------------------------------------- plain twins
def brute_force_retrieval(layer: UltraMem, x: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-knn over the whole n x n grid (materialised: tests only). x (N, D) -> cells, scores (N, knn)."""
    s_row, s_col, core = layer.scores(x)
    grid = torch.einsum("nir,rs,njs->nij", s_row, core, s_col)  # (N, n, n)
    score, cells = grid.flatten(1).topk(knn, dim=-1)
    return cells, score


def ultramem_reference(layer: UltraMem, table: MemoryTable, h: torch.Tensor) -> torch.Tensor:
    """The plain twin of ``UltraMem.forward``: one token at a time, candidates scored one pair at a time,
    values gathered by indexing (slow; tests only)."""
    flat = h.reshape(-1, h.shape[-1])
    core = layer.cores.sum(0)
    a, b = rank1(core)
    out = []
    for x in flat:
        q = layer.q_proj(x).view(2, layer.kh)
        q = F.layer_norm(q, (layer.kh,)) * layer.q_norm
        k = F.layer_norm(layer.keys, (layer.kh,)) * layer.k_norm[:, None, None, :]
        s_row = torch.stack([k[0, i] @ q[0] for i in range(layer.n)])  # (n, r)
        s_col = torch.stack([k[1, j] @ q[1] for j in range(layer.n)])
        rows = sorted(range(layer.n), key=lambda i: -float((s_row[i] @ a).detach()))[: layer.knn]
        cols = sorted(range(layer.n), key=lambda j: -float((s_col[j] @ b).detach()))[: layer.knn]
        cands = [(s_row[i] @ core @ s_col[j], i * layer.n + j) for i in rows for j in cols]
        best = sorted(cands, key=lambda c: -float(c[0].detach()))[: layer.knn]
        p = layer.pre_proj(x)
        v = torch.zeros(layer.vdim, dtype=x.dtype)
        for score, cell in best:
            row = layer.offset + int(layer.perm[cell]) % layer.region
            v = v + (p @ table.pre_values[row]) * score * table.values[row]
        out.append(layer.o_proj(v))
    return torch.stack(out).reshape(h.shape)
