"""Helpers for the tests only (never imported by the library): importable as ``helpers`` because pytest puts
the folder of ``tests/conftest.py`` on ``sys.path``.

- ``randomize_weights``: weights with O(1) activations for numerical comparisons;
  ``perturb_norms_and_biases``: the same idea for a transformers model.
- star-graph checks and printing: ``check_structure``, ``infer_spec``, ``decode_tokens``.
- Triton's interpreter: ``import_triton``, ``run_interpreted`` (kernel tests on a CPU).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType

import torch
from torch import nn

from foresight.data.stargraph import _SYMBOLS, N_SPECIAL, Example, StarGraphSpec
from foresight.errors import ForesightError
from foresight.model.layers import RMSNorm

# --------------------------------------------------------------------------------------------------------
# Model weights


def randomize_weights(module: nn.Module, seed: int, norm_scale: float = 0.3) -> None:
    """Random weights with O(1) activations, for numerical comparisons.

    The training init (std 0.02) makes every output nearly zero, so two implementations could agree by
    accident; these weights (Linear ~ N(0, 1/fan_in), biases 0.3·N(0, 1), embeddings N(0, 1), norms
    1 + norm_scale·N(0, 1)) make every term matter, and keep logits well separated (argmax ties negligible).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            elif isinstance(m, RMSNorm):
                m.weight.copy_(1.0 + norm_scale * torch.randn(m.weight.shape, generator=g))


def perturb_norms_and_biases(model: nn.Module) -> None:
    """A transformers model's norms (init 1) and biases (init 0) made random, from torch's global generator, so
    an import that dropped or swapped one of them would show in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))


# --------------------------------------------------------------------------------------------------------
# Star graph: structure checks and printing (docs/stargraph.md)


def check_structure(ex: Example, spec: StarGraphSpec) -> None:
    """Raise ForesightError unless ``ex`` is a G(d, l) problem on labels < N with a correct answer.

    Slower than ``encode``'s checks (it rebuilds the arms).
    """
    d, length, n = spec.deg, spec.path, spec.nodes  # d, l, N of G(d, l)
    if len(ex.edges) != spec.n_edges:
        raise ForesightError(f"expected {spec.n_edges} edges for {spec}, got {len(ex.edges)}")
    labels = [v for e in ex.edges for v in e] + [ex.source, ex.goal, *ex.path]
    if any(not 0 <= v < n for v in labels):
        raise ForesightError(f"node labels must lie in 0..{n - 1} for {spec}")
    children: dict[int, list[int]] = {}
    for a, b in ex.edges:
        children.setdefault(a, []).append(b)
    if len(children.get(ex.source, [])) != d:
        raise ForesightError(f"source {ex.source} must have {d} outgoing edges")
    seen = {ex.source}
    leaves = set()
    for first in children[ex.source]:
        arm = [ex.source, first]
        while arm[-1] in children:
            if len(children[arm[-1]]) != 1 or len(arm) > length:
                raise ForesightError(f"arm from {ex.source} through {first} is not a simple path of {length} nodes")
            arm.append(children[arm[-1]][0])
        if len(arm) != length or seen & set(arm[1:]) or len(set(arm[1:])) != length - 1:
            raise ForesightError(f"arm {arm} is not a simple path of {length} fresh nodes")
        seen |= set(arm[1:])
        leaves.add(arm[-1])
    if len(seen) != 1 + spec.n_edges:
        raise ForesightError("edges that are not reachable from the source")
    if ex.goal not in leaves:
        raise ForesightError(f"goal {ex.goal} is not the leaf of an arm")
    if len(ex.path) != length or ex.path[0] != ex.source or ex.path[-1] != ex.goal:
        raise ForesightError(f"path {ex.path} must have {length} nodes from source {ex.source} to goal {ex.goal}")
    edge_set = set(ex.edges)
    if any((a, b) not in edge_set for a, b in zip(ex.path, ex.path[1:])):
        raise ForesightError(f"path {ex.path} does not follow the edges")


def infer_spec(examples: Sequence[Example], nodes: int | None = None) -> StarGraphSpec:
    """The spec of a list of examples: deg = out-degree of the source, path = answer length,
    nodes = ``nodes`` if given, else the largest label + 1."""
    if not examples:
        raise ForesightError("star graph: cannot infer the task shape from zero examples")
    first = examples[0]
    deg = sum(a == first.source for a, _ in first.edges)
    spec_path = len(first.path)
    largest = -1
    for i, ex in enumerate(examples):
        if len(ex.path) != spec_path or len(ex.edges) != deg * (spec_path - 1):
            raise ForesightError(
                f"star graph: example {i} has {len(ex.edges)} edges and a {len(ex.path)}-node path, "
                f"but example 0 is G({deg},{spec_path}); all examples must have the same shape"
            )
        largest = max(largest, ex.source, ex.goal, *ex.path, *(v for e in ex.edges for v in e))
    if nodes is None:
        nodes = largest + 1
    elif nodes <= largest:
        raise ForesightError(f"star graph: nodes = {nodes} but the examples use label {largest}; raise nodes")
    return StarGraphSpec(deg=deg, path=spec_path, nodes=nodes).validate()


def token_name(token: int, spec: StarGraphSpec) -> str:
    """Printable form of one token id: the label, a symbol, or ``<id?>`` when out of the vocabulary."""
    if 0 <= token < spec.nodes:
        return str(token)
    if 0 <= token - spec.nodes < N_SPECIAL:
        return _SYMBOLS[token - spec.nodes]
    return f"<{token}?>"


def decode_tokens(ids: Iterable[int] | torch.Tensor, spec: StarGraphSpec) -> str:
    """Space-separated rendering of token ids, e.g. ``4 7 | 7 2 / 4 2 = 4 7 2`` (works on partial sequences)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    return " ".join(token_name(int(t), spec) for t in ids)


# --------------------------------------------------------------------------------------------------------
# Triton's interpreter: kernels on a CPU (TRITON_INTERPRET=1)
#
# The interpreter is chosen when ``triton.language`` is first imported, so the variable must be set before
# that; a process that imported Triton earlier compiles instead and cannot interpret (then re-run in a fresh
# process with the variable set).


def import_triton(interpret: bool) -> tuple[ModuleType | None, bool]:
    """Import Triton, in interpreter mode when ``interpret`` and Triton is not imported yet.

    Returns (the module or None when it is not installed, whether its kernels run here: compiled when not
    ``interpret``, else only if the interpreter really was chosen). The variable is restored afterwards:
    kernels read it again at launch, so callers set it around their runs.
    """
    if interpret and "triton" not in sys.modules:
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton  # noqa: F401
        except ImportError:
            pass
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
    try:
        import triton
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return None, False
    return triton, (not interpret) or isinstance(triton.language.max, InterpretedFunction)


def run_interpreted(path: str, *pytest_args: str) -> None:
    """Run the pytest file ``path`` in a fresh interpreter process with ``TRITON_INTERPRET=1`` (raises on failure)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path, *pytest_args],
                   env=env, check=True)
