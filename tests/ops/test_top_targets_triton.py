"""The Triton TOP target builder against the PyTorch twin (``objectives.top.top_targets``, issue #4).

Without CUDA the kernel runs in Triton's interpreter (set up as in test_soft_ce_triton.py: TRITON_INTERPRET=1
must be on before ``triton.language`` is first imported; if another module imported Triton first, one test
re-runs this file in a fresh interpreter); with CUDA the same tests run the compiled kernel. The twin is itself
tested against the literal dense definition in tests/objectives/test_top_objective.py.

Equality: ids exactly; weights to fp32 rounding (the softmax sums in another order, and the exponential is
numpy's / libdevice's, not PyTorch's): within 4 ulp relative or 1e-7 absolute — about 1e-7 for weights near 1.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import import_triton, run_interpreted

ON_GPU = torch.cuda.is_available()
triton, RUNNABLE = import_triton(interpret=not ON_GPU)
if triton is None:
    pytest.skip("triton is not installed (pip install 'triton>=3.0', Linux)", allow_module_level=True)
pytestmark = pytest.mark.usefixtures("triton_interpreter")

from foresight.objectives import top as top_module  # noqa: E402
from foresight.objectives.top import top_targets  # noqa: E402
from foresight.ops.kernels import top_targets_triton  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
runnable = pytest.mark.skipif(not RUNNABLE, reason="triton.language was imported before TRITON_INTERPRET=1 "
                              "was set; test_in_fresh_interpreter runs these tests")
B, T = 3, 11
WEIGHT_TOL = dict(rtol=4.8e-7, atol=1e-7)  # 4 fp32 ulp relative, 1e-7 absolute


def test_in_fresh_interpreter():
    if RUNNABLE:
        pytest.skip("the tests of this file run in this process")
    run_interpreted(__file__)


def make_tokens(seed, length, vocab=5, *, ignore_index=-100):
    """(B, length) ids from a small vocabulary (repeats in every window), ~12 % ignore_index, ~8 % -1, one -7,
    and a row whose tail is ignored (its last positions have no target)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, length), generator=g)
    r = torch.rand(B, length, generator=g)
    tokens[r < 0.12] = ignore_index
    tokens[(r >= 0.12) & (r < 0.2)] = -1
    tokens[1, 3] = -7
    tokens[2, T - 3 :] = ignore_index
    return tokens


def both(tokens, seq_len, window, **kw):
    """(ids, weights) of the twin and of the kernel, after checking that they agree."""
    kernel = kw.pop("kernel", None)  # the Triton path's tiles
    ref = top_targets(tokens, seq_len, window, impl="torch", **kw)
    got = top_targets(tokens.to(DEVICE), seq_len, window, impl="triton", kernel=kernel,
                      **{k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert got[0].shape == ref[0].shape and got[0].dtype == ref[0].dtype and got[1].dtype == torch.float32
    assert torch.equal(got[0].cpu(), ref[0]), "ids differ"
    torch.testing.assert_close(got[1].cpu(), ref[1], **WEIGHT_TOL)
    assert torch.equal((got[1] > 0).any(-1).cpu(), (ref[1] > 0).any(-1))  # the same rows have a target
    return ref, got


@runnable
@pytest.mark.parametrize("scores", ["exact", "paper"])
@pytest.mark.parametrize("window", [1, 2, 7, 128, 129, 4096])
def test_matches_twin(window, scores):
    tokens = make_tokens(window, T + 300)  # every slot of every position inside the stream
    (ids, w), _ = both(tokens, T, window, scores=scores)
    assert (w > 0).any(-1).any() and not (w > 0).any(-1).all()  # rows with and without a target
    assert (w > 0).sum(-1).max() <= 5  # at most the 5 distinct ids of the vocabulary: repeats were dropped
    both(tokens[:, : T + 6], T, window, scores=scores)  # windows cut by the end of the stream
    both(tokens[:, : T + 1], T, window, scores=scores)  # one token of look-ahead


@runnable
@pytest.mark.parametrize("scores", ["exact", "paper"])
@pytest.mark.parametrize("window", [7, 4096])
def test_horizon(window, scores):
    tokens = make_tokens(10 + window, T + 200)
    tokens[0, 1:40] = -100  # position 0 starts past an ignored run: slots and offsets differ there
    horizon = torch.randint(0, 12, (B, T), generator=torch.Generator().manual_seed(3))
    horizon[0, 0] = 45  # the offsets of position 0 run from 39: the horizon cuts after 7 of them
    (_, w), _ = both(tokens, T, window, scores=scores, horizon=horizon)
    (_, w_free), _ = both(tokens, T, window, scores=scores)
    assert not torch.equal(w, w_free)


@runnable
@pytest.mark.parametrize("window", [200, 4096])
def test_ignored_runs_longer_than_k(window):
    """Runs of ignored and negative ids of 150 and 300 tokens: the K slots start after them (and a run longer
    than the window leaves nothing to rank); a custom ignore_index that is a real id."""
    length = T + 700
    tokens = torch.randint(0, 9, (B, length), generator=torch.Generator().manual_seed(window))
    tokens[0, 2:152] = -100
    tokens[1, 5:305] = -1
    tokens[1, 100] = -7
    tokens[2, 1:400] = 4
    (ids, w), _ = both(tokens, T, window)
    assert (w[0, :4] > 0).any(-1).all()  # found after 150 ignored tokens
    assert (w[1, :T].sum(-1) > 0).all() == (window > 300)  # the 300-token run hides everything at W = 200
    both(tokens, T, window, ignore_index=4)  # row 2: 399 pad tokens that are a vocabulary id
    both(tokens, T, window, scores="paper", ignore_index=4)


@runnable
def test_search_and_comparison_tiles():
    """Tiny tiles: the search for the first scorable token loops over many 4-token steps, the duplicate
    comparison over 8- and 2-column steps (every boundary crossed)."""
    tiles = top_targets_triton.TargetKernelConfig
    tokens = make_tokens(5, T + 150)
    tokens[0, 3:60] = -100
    both(tokens, T, 4096, kernel=tiles(block_s=4, block_j=8))
    both(tokens, T, 7, scores="paper", horizon=torch.full((B, T), 3), kernel=tiles(block_s=4, block_j=2))


def test_tiles_come_from_the_config():
    tiles = top_targets_triton.TargetKernelConfig
    assert top_targets_triton._block_j(128, False, tiles()) == 16  # compiled default
    assert top_targets_triton._block_j(128, True, tiles()) == 128  # the interpreter compares all K at once
    assert top_targets_triton._block_j(128, False, tiles(block_j=2)) == 2
    assert top_targets_triton._block_j(7, True, tiles(block_j=64)) == 16  # never wider than the K tile


@runnable
def test_int32_tokens_and_empty():
    tokens = make_tokens(8, T + 20).int()
    (ids, _), _ = both(tokens, T, 9)
    assert ids.dtype == torch.int32
    ids, w = top_targets(tokens[:, :1].to(DEVICE), 0, 9, impl="triton")  # no positions
    assert ids.shape == w.shape == (B, 0, 9)


def test_slot_count_matches_the_objective():
    assert top_targets_triton.MAX_SLOTS == top_module.MAX_SLOTS


# ----------------------------------------------------------------------------- compiled code, no GPU needed
COMPILE_CHECK = """
from foresight.ops.kernels.top_targets_triton import compile_for_gpu
for k in (1, 128):
    for paper in (False, True):
        for horizon in (False, True):
            ptx = compile_for_gpu(90, k=k, paper=paper, horizon=horizon)
            assert "div.rn.f32" in ptx, "the softmax division is not the IEEE one"
            assert "0f32A57060" in ptx, "libdevice expf (its log2(e) low part) is not used"
print("compiled")
"""


def test_kernel_compiles_for_sm90(tmp_path):
    """Ahead-of-time compile to sm_90 (the H200) in a process without TRITON_INTERPRET; the precise exp and
    division are the ones compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", COMPILE_CHECK], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scores", ["exact", "paper"])
@pytest.mark.parametrize("window", [7, 4096])
def test_gpu_anchor_shape(window, scores):
    """4 × 4096 positions of Zipf-like ids over V = 32000 with ignored runs and document horizons, the
    compiled kernel with its default tiles against the twin on the same GPU."""
    g = torch.Generator().manual_seed(window)
    probs = 1.0 / torch.arange(1, 32001, dtype=torch.float64) ** 1.1
    tokens = torch.multinomial(probs.float(), 4 * (4096 + 129), replacement=True, generator=g).view(4, -1)
    tokens[1, 1000:1300] = -100
    tokens[2, 4000:] = -100
    horizon = torch.randint(0, 300, (4, 4096), generator=g)
    tokens, horizon = tokens.cuda(), horizon.cuda()
    for hz in (None, horizon):
        ref = top_targets(tokens, 4096, window, scores=scores, horizon=hz, impl="torch")
        got = top_targets(tokens, 4096, window, scores=scores, horizon=hz, impl="auto")  # the kernel on CUDA
        assert torch.equal(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1], **WEIGHT_TOL)
