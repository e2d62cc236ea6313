"""UltraMemV2 memory layer: TDQKR retrieval against brute force over the whole key grid, the layer against its
per-token reference (values and gradients), shared-table addressing, initialisation, determinism, bad settings."""

from __future__ import annotations

import pytest
import torch

from foresight.errors import ForesightError
from foresight.model import ModelConfig, Transformer
from foresight.model.ultramem import (
    MemoryTable,
    UltraMem,
    brute_force_retrieval,
    gather_dot,
    table_layout,
    tdqkr,
    ultramem_reference,
)


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=23, hidden_size=18, n_layers=3, n_heads=9, intermediate_size=26, ffn="ultramem",
                mem_keys=9, mem_kdim=10, mem_rank=3, mem_cores=2, mem_knn=4, mem_vdim=7, mem_pre_vdim=5,
                mem_expand=1, mem_share_ratio=0.5)
    return ModelConfig(**{**base, **kw})


def _layer(cfg: ModelConfig, layer: int = 1, seed: int = 0) -> tuple[UltraMem, MemoryTable]:
    torch.manual_seed(seed)
    mem, table = UltraMem(cfg, layer).double(), MemoryTable(cfg).double()
    with torch.no_grad():  # O(1) values so that errors are not hidden by 0.02-sized outputs
        table.values.normal_()
        table.pre_values.normal_()
    return mem, table


@pytest.mark.parametrize("rank, cores", [(2, 2), (3, 1), (1, 3)])
def test_retrieval_equals_brute_force_when_knn_covers_the_grid(rank, cores):
    """knn = n: every row and column is a candidate, so TDQKR's top-knn must be the grid's exact top-knn."""
    cfg = _cfg(mem_keys=7, mem_knn=7, mem_rank=rank, mem_cores=cores)
    mem, _ = _layer(cfg)
    x = torch.randn(11, 18, dtype=torch.double)
    cells, scores = mem.retrieve(x)
    want_cells, want_scores = brute_force_retrieval(mem, x, cfg.mem_knn)
    torch.testing.assert_close(scores, want_scores, rtol=1e-12, atol=1e-12)
    assert torch.equal(cells, want_cells)


def test_preselection_keeps_the_exact_top_pairs_of_its_candidates():
    """knn < n: the result is the exact top-knn of the rank-1-preselected rows x columns (literal loop)."""
    torch.manual_seed(3)
    s_row, s_col = torch.randn(5, 8, 2, dtype=torch.double), torch.randn(5, 8, 2, dtype=torch.double)
    core = torch.rand(2, 2, dtype=torch.double) + torch.rand(2, 2, dtype=torch.double)
    cells, scores = tdqkr(s_row, s_col, core, 3)
    u, s, vh = torch.linalg.svd(core)
    a, b = u[:, 0] * s[0].sqrt(), vh[0] * s[0].sqrt()
    if a.sum() < 0:
        a, b = -a, -b
    for t in range(5):
        rows = sorted(range(8), key=lambda i: -float(s_row[t, i] @ a))[:3]
        cols = sorted(range(8), key=lambda j: -float(s_col[t, j] @ b))[:3]
        pairs = sorted(((float(s_row[t, i] @ core @ s_col[t, j]), i * 8 + j) for i in rows for j in cols),
                       reverse=True)[:3]
        assert cells[t].tolist() == [c for _, c in pairs]
        assert scores[t].tolist() == pytest.approx([v for v, _ in pairs], rel=1e-12)


@pytest.mark.parametrize("expand, knn", [(1, 4), (3, 2), (1, 9)])
def test_layer_equals_the_per_token_reference_with_gradients(expand, knn):
    cfg = _cfg(mem_expand=expand, mem_knn=knn)
    mem, table = _layer(cfg)
    h = torch.randn(2, 5, 18, dtype=torch.double, requires_grad=True)
    got = mem(h, table)
    want = ultramem_reference(mem, table, h)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(got)
    params = [h, *mem.parameters(), *table.parameters()]
    grads = torch.autograd.grad((got * g).sum(), params)
    refs = torch.autograd.grad((want * g).sum(), params)
    names = ["h", *(n for n, _ in mem.named_parameters()), "values", "pre_values"]
    for name, a, b in zip(names, grads, refs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
        assert a.abs().sum() > 0, f"no gradient reaches {name}"  # scores (q, keys, norms), cores, values


def test_gather_dot_gradcheck():
    torch.manual_seed(4)
    p = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    table = torch.randn(6, 3, dtype=torch.double, requires_grad=True)
    idx = torch.tensor([[0, 5], [5, 5], [2, 1], [3, 0]])  # a repeated row in one bag, too
    assert torch.autograd.gradcheck(lambda p, t: gather_dot(p, t, idx), (p, table))
    torch.testing.assert_close(gather_dot(p, table, idx), (p[:, None, :] * table[idx]).sum(-1))


@pytest.mark.parametrize("layers, ratio, rows, offsets", [
    (3, 1.0, 16, [0, 0, 0]),  # everything shared
    (3, 0.5, 32, [0, 8, 16]),  # each layer addresses half of the table
    (3, 1 / 3, 48, [0, 16, 32]),  # disjoint regions
    (3, 0.1, 48, [0, 16, 32]),  # never more than disjoint
    (1, 0.5, 16, [0]),
])
def test_shared_table_layout(layers, ratio, rows, offsets):
    cfg = _cfg(n_layers=layers, mem_keys=8, mem_expand=2, mem_knn=2, mem_share_ratio=ratio)
    assert table_layout(cfg) == (16, rows, offsets)  # region = (8 / 2)² = 16 rows


def test_addressing_covers_each_layers_region_evenly():
    """Layer l's n² grid cells land in rows offset_l .. offset_l + S - 1, each row E² times (implicit expansion)."""
    cfg = _cfg(n_layers=3, mem_keys=9, mem_expand=3, mem_knn=2, mem_share_ratio=0.5)
    region, rows, offsets = table_layout(cfg)
    assert (region, rows, offsets) == (9, 18, [0, 4, 9])
    for layer in range(3):
        mem = UltraMem(cfg, layer)
        idx = mem.address(torch.arange(81))
        assert torch.equal(torch.bincount(idx - offsets[layer], minlength=region), torch.full((region,), 9))
    model = Transformer(cfg)
    assert model.memory_table.values.shape == (18, 7)
    assert [layer.memory.offset for layer in model.layers] == [0, 4, 9]


def test_initialisation():
    cfg = _cfg(mem_keys=40, mem_kdim=64, mem_knn=4, hidden_size=60, n_heads=6, mem_vdim=50)
    torch.manual_seed(5)
    model = Transformer(cfg).requires_grad_(False)
    mem = model.layers[0].memory
    assert torch.all(mem.q_norm == 32 ** -0.4) and torch.all(mem.k_norm == 32 ** -0.4)
    assert float(mem.keys.std()) == pytest.approx(32 ** -0.5, rel=0.1)
    assert float(mem.q_proj.weight.std()) == pytest.approx(32 ** -0.5, rel=0.1)
    assert float(mem.o_proj.weight.std()) == pytest.approx(50 ** -0.5, rel=0.1)
    assert float(mem.pre_proj.weight.std()) == pytest.approx(60 ** -0.5, rel=0.1)
    assert 0 <= float(mem.cores.min()) and float(mem.cores.max()) <= 1
    assert float(model.memory_table.values.std()) == pytest.approx(0.02, rel=0.1)


def test_deterministic():
    cfg = _cfg()
    ids = torch.randint(0, 23, (2, 6))
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = Transformer(cfg)
        outs += [model(ids), model(ids)]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    torch.manual_seed(123)  # the grid permutation does not depend on the global RNG
    assert torch.equal(UltraMem(cfg, 2).perm, Transformer(cfg).layers[2].memory.perm)


def test_retrieval_never_builds_the_key_grid():
    """n = 1500 keys per axis: a grid would be 2.25M scores per token; TDQKR keeps O(N·n·r)."""
    cfg = _cfg(mem_keys=1500, mem_knn=8, n_layers=1)
    mem = UltraMem(cfg, 0)
    x = torch.randn(64, 18)
    big = []  # sizes of the tensors autograd keeps (a grid implementation keeps its (N, n²) scores for topk)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: big.append(t.numel()) or t, lambda t: t):
        cells, scores = mem.retrieve(x)
    assert cells.shape == (64, 8) and int(cells.max()) < 1500 * 1500
    assert max(big) <= 64 * 1500 * cfg.mem_rank  # the largest tensor kept: (N, n, r) scores, not (N, n²)


@pytest.mark.parametrize("kw, needle", [
    ({"mem_knn": 10}, "mem_knn"), ({"mem_kdim": 9}, "mem_kdim"), ({"mem_share_ratio": 0.0}, "mem_share_ratio"),
    ({"mem_share_ratio": 1.5}, "mem_share_ratio"), ({"mem_expand": 2}, "mem_expand"), ({"mem_rank": 0}, "mem_rank"),
])
def test_bad_memory_settings_are_one_line(kw, needle):
    with pytest.raises(ForesightError, match=needle) as e:
        _cfg(**kw)
    assert "\n" not in str(e.value)
