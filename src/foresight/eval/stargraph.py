"""Star-graph evaluation: greedy decoding of the answer path and its metrics.

Sources: Bachmann & Nagarajan, "The Pitfalls of Next-Token Prediction" (ICML 2024) and the TOP paper
(§5.3); spec in docs/stargraph.md, "Metrics". The success metric is exact match of the
greedily decoded path: teacher-forced accuracy is ≈ 100 % under the "Clever Hans" cheat and says nothing.
We also report v1 accuracy (the one token that needs planning) and whether the output is a valid
root-to-leaf arm of the example's graph (a model that picks the wrong arm still follows edges).

A model trained with TRELAWNEY (data/trelawney.py) may write ``<T> … </T>`` spans: it decodes up to
2 + min(max_span, l) tokens more, every span is removed (``strip_lookahead``) and the first l tokens left are
scored as above. With ``prompt_open`` the prompt ends ``= <T>``, so the model writes its own lookahead first.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from foresight.data.stargraph import StarGraphData, StarGraphSpec
from foresight.data.trelawney import TrelawneyConfig, strip_lookahead
from foresight.errors import ForesightError
from foresight.generate.sampling import generate
from foresight.modes import eval_mode


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def greedy_paths(model: nn.Module, prefixes: torch.Tensor, path_len: int) -> torch.Tensor:
    """Greedy decoding: prefixes (B, P) long -> the next ``path_len`` tokens (B, path_len) long.

    A model with a KV cache (``new_caches()``, as the trunk ``Transformer``) decodes through
    ``foresight.generate.generate``: the prefix runs once, then one token per step against the cache.
    Any other module re-runs the whole (short) sequence per token. Either way the argmax of the last
    position's logits is taken over the full vocabulary (no restriction to node ids: a model that emits a symbol
    is simply wrong). The model is in eval mode only for the duration of the call.
    """
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if prefixes.is_cuda else contextlib.nullcontext()
    )
    seq = prefixes
    with eval_mode(model), autocast:
        if hasattr(model, "new_caches"):
            return generate(model, prefixes, path_len)[:, prefixes.shape[1] :]
        for _ in range(path_len):
            logits = model(seq)  # (B, T, V)
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            seq = torch.cat([seq, nxt.to(seq.dtype)], dim=1)
    return seq[:, prefixes.shape[1] :]


def valid_arms(out: torch.Tensor, prefixes: torch.Tensor, spec: StarGraphSpec) -> torch.Tensor:
    """(B,) bool: whether each decoded path out (B, l) is a root-to-leaf arm of its prefix's graph.

    Valid = starts at the source, every consecutive pair is an edge, the last node has no outgoing edge
    and the path has exactly l tokens.
    """
    b, e = prefixes.shape[0], spec.n_edges
    if out.shape[1] != spec.path:
        return torch.zeros(b, dtype=torch.bool, device=out.device)
    # Edge k sits at prefix positions 3k (parent) and 3k + 1 (child); the '|' separators at 3k + 2.
    parents = prefixes[:, 0 : 3 * e : 3]  # (B, E)
    children = prefixes[:, 1 : 3 * e : 3]  # (B, E)
    source = prefixes[:, spec.prefix_len - 3]  # (B,)
    ok = out[:, 0] == source
    for k in range(spec.path - 1):
        is_edge = (parents == out[:, k : k + 1]) & (children == out[:, k + 1 : k + 2])  # (B, E)
        ok &= is_edge.any(dim=1)
    ok &= ~(parents == out[:, -1:]).any(dim=1)  # ends at a leaf
    return ok


def strip_paths(out: torch.Tensor, spec: StarGraphSpec, length: int) -> torch.Tensor:
    """(B, n) decoded tokens -> (B, length): every ``<T> … </T>`` removed, the first ``length`` tokens left; a
    row left shorter is padded with −1 (no node: never an exact match nor a valid arm)."""
    rows = []
    for row in out.tolist():
        kept = strip_lookahead(row, spec.open_id, spec.close_id)[:length]
        rows.append(kept + [-1] * (length - len(kept)))
    return torch.tensor(rows, dtype=out.dtype, device=out.device).reshape(out.shape[0], length)


def evaluate(
    model: nn.Module, data: StarGraphData, spec: StarGraphSpec | None = None, batch_size: int = 512,
    trelawney: TrelawneyConfig | None = None,
) -> dict[str, float | int]:
    """Greedy-decode every example of ``data`` and score it (``trelawney``: the model's training used it; see
    the module docstring).

    Returns {"exact_match", "v1_acc", "valid_arm"} as floats in [0, 1] and "n" (number of examples).
    """
    spec = data.spec if spec is None else spec
    if spec != data.spec:
        raise ForesightError(f"evaluate: spec {spec} does not match the data's spec {data.spec}")
    if batch_size < 1:
        raise ForesightError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    device = _device_of(model)
    p, length = spec.prefix_len, spec.path  # P and l
    if trelawney is not None and not spec.lookahead:
        raise ForesightError("evaluate: TRELAWNEY needs the spec's <T> and </T> ids (lookahead=True)")
    extra = 0 if trelawney is None else 2 + min(trelawney.max_span, length)  # room for one span
    exact = v1 = valid = 0
    for start in range(0, len(data), batch_size):
        rows = data.tokens[start : start + batch_size].to(device)  # (B, P + l)
        prefixes, truth = rows[:, :p], rows[:, p:]
        if trelawney is None:
            out = greedy_paths(model, prefixes, length)  # (B, l)
        elif trelawney.prompt_open:
            opened = torch.full_like(prefixes[:, :1], spec.open_id)  # (B, 1): the prompt ends '= <T>'
            out = greedy_paths(model, torch.cat([prefixes, opened], dim=1), length + extra - 1)
            out = strip_paths(torch.cat([opened, out], dim=1), spec, length)  # (B, l)
        else:
            out = strip_paths(greedy_paths(model, prefixes, length + extra), spec, length)  # (B, l)
        exact += int((out == truth).all(dim=1).sum())
        v1 += int((out[:, 1] == truth[:, 1]).sum())
        valid += int(valid_arms(out, prefixes, spec).sum())
    n = len(data)
    return {"exact_match": exact / n, "v1_acc": v1 / n, "valid_arm": valid / n, "n": n}
