"""Star-graph evaluation: greedy decoding and the exact-match / v1 / valid-arm metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.errors import ForesightError
from foresight.eval.stargraph import evaluate, greedy_paths, valid_arms
from foresight.model import ModelConfig, Transformer

SPEC = StarGraphSpec(deg=3, path=4, nodes=20)


def decode_prefix(row: list[int], spec: StarGraphSpec) -> tuple[list[tuple[int, int]], int, int]:
    """(edges, source, goal) read back from one prefix's token ids."""
    e = spec.n_edges
    edges = [(row[3 * k], row[3 * k + 1]) for k in range(e)]
    return edges, row[3 * e], row[3 * e + 1]


def arm_to(edges: list[tuple[int, int]], source: int, leaf: int) -> list[int]:
    """The arm source … leaf, found by walking parent links back from the leaf."""
    parent = {b: a for a, b in edges}
    arm = [leaf]
    while arm[-1] != source:
        arm.append(parent[arm[-1]])
    return arm[::-1]


def first_wrong_arm(edges: list[tuple[int, int]], source: int, goal: int) -> list[int]:
    """The first distractor arm in edge-list order (an arm not ending at the goal)."""
    child = {a: b for a, b in edges if a != source}
    for a, b in edges:
        if a == source:
            arm = [source, b]
            while arm[-1] in child:
                arm.append(child[arm[-1]])
            if arm[-1] != goal:
                return arm
    raise AssertionError("no distractor arm")


class ScriptedModel(nn.Module):
    """A fake model: logits (B, T, V) whose last position peaks on ``answer(prefix)[T − P]``."""

    def __init__(self, spec: StarGraphSpec, answer) -> None:
        super().__init__()
        self.spec = spec
        self.answer = answer  # (prefix ids list) -> list of l token ids
        self.register_buffer("anchor", torch.zeros(()))  # gives the module a device
        self.calls_in_train_mode = 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.calls_in_train_mode += self.training
        b, t = input_ids.shape
        p = self.spec.prefix_len
        logits = torch.zeros(b, t, self.spec.vocab_size)
        for i, row in enumerate(input_ids.tolist()):
            logits[i, -1, self.answer(row[:p])[t - p]] = 10.0
        return logits


def oracle(prefix: list[int]) -> list[int]:
    edges, source, goal = decode_prefix(prefix, SPEC)
    return arm_to(edges, source, goal)


def wrong_arm(prefix: list[int]) -> list[int]:
    edges, source, goal = decode_prefix(prefix, SPEC)
    return first_wrong_arm(edges, source, goal)


@pytest.fixture(scope="module")
def data() -> StarGraphData:
    return StarGraphData(generate(SPEC, 64, seed=0), SPEC)


def test_oracle_scores_perfectly(data):
    model = ScriptedModel(SPEC, oracle).train()
    metrics = evaluate(model, data, SPEC, batch_size=24)  # 24 does not divide 64: ragged last chunk
    assert metrics == {"exact_match": 1.0, "v1_acc": 1.0, "valid_arm": 1.0, "n": 64}
    assert all(isinstance(metrics[k], float) for k in ("exact_match", "v1_acc", "valid_arm"))
    assert model.training and model.calls_in_train_mode == 0  # eval mode only during decoding


def test_wrong_arm_is_valid_but_wrong(data):
    metrics = evaluate(ScriptedModel(SPEC, wrong_arm), data)
    assert metrics == {"exact_match": 0.0, "v1_acc": 0.0, "valid_arm": 1.0, "n": 64}


@pytest.mark.parametrize(
    "answer",
    [
        lambda prefix: [SPEC.dollar_id] * SPEC.path,  # symbols
        lambda prefix: [prefix[3 * SPEC.n_edges]] * SPEC.path,  # source repeated: (s, s) is no edge
        lambda prefix: oracle(prefix)[:-1] + [oracle(prefix)[-2]],  # stutters before the goal
        lambda prefix: oracle(prefix)[1:] + [0],  # does not start at the source
    ],
)
def test_garbage_is_not_a_valid_arm(data, answer):
    metrics = evaluate(ScriptedModel(SPEC, answer), data)
    assert metrics["valid_arm"] == 0.0 and metrics["exact_match"] == 0.0


def test_valid_arm_needs_a_leaf():
    spec = StarGraphSpec(deg=2, path=3, nodes=10)
    # Edges 4→7, 1→9, 7→2, 4→1; source 4, goal 2.
    prefix = torch.tensor([[4, 7, 10, 1, 9, 10, 7, 2, 10, 4, 1, 12, 4, 2, 11]])
    outs = {(4, 7, 2): True, (4, 1, 9): True, (4, 7, 7): False, (7, 2, 2): False, (4, 1, 2): False}
    for out, expected in outs.items():
        assert valid_arms(torch.tensor([out]), prefix, spec).item() is expected, out
    assert not valid_arms(torch.tensor([[4, 7]]), prefix, spec).item()  # too short


def test_greedy_paths_shape_and_values(data):
    out = greedy_paths(ScriptedModel(SPEC, oracle), data.prefixes[:5], SPEC.path)
    assert out.shape == (5, SPEC.path) and out.dtype == torch.long
    assert torch.equal(out, data.paths[:5])


def test_evaluate_rejects_mismatched_spec(data):
    with pytest.raises(ForesightError, match="does not match"):
        evaluate(ScriptedModel(SPEC, oracle), data, StarGraphSpec(deg=2, path=4, nodes=20))


def test_real_transformer_end_to_end(data):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=SPEC.vocab_size, hidden_size=32, n_layers=1, n_heads=2, max_seq_len=SPEC.seq_len + 1)
    model = Transformer(cfg)
    out = greedy_paths(model, data.prefixes[:3], SPEC.path)
    assert out.shape == (3, SPEC.path)
    assert int(out.min()) >= 0 and int(out.max()) < SPEC.vocab_size
    metrics = evaluate(model, data, batch_size=16)
    assert metrics["n"] == 64
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("exact_match", "v1_acc", "valid_arm"))
    assert model.training  # restored


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_transformer_on_cuda_uses_bf16_autocast(data):
    cfg = ModelConfig(vocab_size=SPEC.vocab_size, hidden_size=32, n_layers=1, n_heads=2)
    model = Transformer(cfg).cuda()
    metrics = evaluate(model, data, batch_size=32)
    assert metrics["n"] == 64 and 0.0 <= metrics["valid_arm"] <= 1.0


def test_kv_cache_decoding_equals_rerunning_the_prefix(data):
    # greedy_paths decodes a Transformer through generate (KV cache); a module without new_caches re-runs the
    # whole sequence per token. Both must give the same tokens (wide init: confident, untied logits).
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=SPEC.vocab_size, hidden_size=32, n_layers=2, n_heads=2, init_std=0.5,
                      max_seq_len=SPEC.seq_len + 1)
    model = Transformer(cfg)

    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(ids)

    cached = greedy_paths(model, data.prefixes, SPEC.path)
    rerun = greedy_paths(NoCache(model), data.prefixes, SPEC.path)
    assert torch.equal(cached, rerun)
    assert len(set(map(tuple, cached.tolist()))) > 1  # not a constant output
