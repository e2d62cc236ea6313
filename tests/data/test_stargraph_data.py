"""Star-graph data: generator, text format, files, tokens and batches (docs/stargraph.md)."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch

from foresight.data.stargraph import (
    Example,
    StarGraphData,
    StarGraphSpec,
    encode,
    format_example,
    generate,
    generate_example,
    parse_example,
    read_examples,
    split_seeds,
    write_examples,
)
from foresight.errors import ForesightError

from helpers import check_structure, decode_tokens, infer_spec

PAPER_LINE = "32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=32,34,6,16,12"

# A hand-made G(2,3) example on N = 10 labels: arms 4→7→2 (the answer) and 4→1→9.
TINY_SPEC = StarGraphSpec(deg=2, path=3, nodes=10)
TINY = Example(edges=[(4, 7), (1, 9), (7, 2), (4, 1)], source=4, goal=2, path=[4, 7, 2])


def arms_of(ex: Example) -> list[list[int]]:
    """Independent re-derivation of the arms (source first) from the edge list, for structure checks."""
    child = {}
    firsts = []
    for a, b in ex.edges:
        if a == ex.source:
            firsts.append(b)
        else:
            assert a not in child, "a non-source node with two children"
            child[a] = b
    arms = []
    for first in firsts:
        arm = [ex.source, first]
        while arm[-1] in child:
            arm.append(child[arm[-1]])
        arms.append(arm)
    return arms


# ---------------------------------------------------------------------------------------------- spec


def test_spec_sizes():
    spec = StarGraphSpec(deg=5, path=5, nodes=30)
    assert spec.n_edges == 20
    assert spec.prefix_len == 63
    assert spec.seq_len == 67
    assert spec.vocab_size == 34
    assert (spec.pipe_id, spec.equals_id, spec.slash_id, spec.dollar_id) == (30, 31, 32, 33)


@pytest.mark.parametrize(
    "deg, path, nodes, needle",
    [(0, 3, 10, "deg"), (2, 1, 10, "path"), (5, 5, 20, "at least 1 + deg*(path-1) = 21")],
)
def test_spec_validate_errors(deg, path, nodes, needle):
    with pytest.raises(ForesightError, match=re.escape(needle)):
        StarGraphSpec(deg=deg, path=path, nodes=nodes).validate()


def test_spec_minimum_nodes_is_enough():
    spec = StarGraphSpec(deg=3, path=4, nodes=10).validate()  # exactly 1 + 3·3 labels: all used every time
    for ex in generate(spec, 50, seed=0):
        check_structure(ex, spec)
        assert {v for e in ex.edges for v in e} == set(range(10))


# ---------------------------------------------------------------------------------------------- generator


def test_generate_reproducible_and_seed_dependent():
    spec = StarGraphSpec(deg=3, path=5, nodes=30)
    a, b, c = generate(spec, 50, seed=7), generate(spec, 50, seed=7), generate(spec, 50, seed=8)
    assert a == b
    assert a != c
    train, test = split_seeds(7)
    assert train != test and split_seeds(7) == (train, test)
    assert generate(spec, 20, train) != generate(spec, 20, test)


@pytest.mark.parametrize("deg, path, nodes", [(2, 3, 10), (3, 5, 30), (5, 5, 30), (1, 2, 2), (4, 2, 50)])
def test_generated_structure(deg, path, nodes):
    spec = StarGraphSpec(deg=deg, path=path, nodes=nodes)
    for ex in generate(spec, 200, seed=1):
        assert len(ex.edges) == spec.n_edges
        arms = arms_of(ex)
        assert len(arms) == deg
        assert all(len(arm) == path and arm[0] == ex.source for arm in arms)
        labels = [v for arm in arms for v in arm[1:]]
        assert len(set(labels)) == len(labels) and ex.source not in labels  # only the source is shared
        assert all(0 <= v < nodes for v in labels + [ex.source])
        assert ex.path in arms and ex.path[0] == ex.source and ex.path[-1] == ex.goal
        assert ex.goal != ex.source
        edge_set = set(ex.edges)
        assert all((u, v) in edge_set for u, v in zip(ex.path, ex.path[1:]))
        assert not any(a == ex.goal for a, _ in ex.edges)  # the goal is a leaf
        check_structure(ex, spec)


def test_edges_are_shuffled():
    spec = StarGraphSpec(deg=2, path=3, nodes=10)  # E = 4
    examples = generate(spec, 2000, seed=3)
    # Where the answer's first edge (s, v1) lands in the list: uniform over the 4 slots.
    where = Counter(ex.edges.index((ex.path[0], ex.path[1])) for ex in examples)
    assert set(where) == {0, 1, 2, 3}
    assert all(350 < where[k] < 650 for k in range(4)), where


def test_source_and_goal_roughly_uniform():
    spec = StarGraphSpec(deg=2, path=3, nodes=10)
    examples = generate(spec, 5000, seed=11)
    # Expected 500 per label, std ≈ 21: ±120 is a ~5.7σ band, so this never flakes for a fixed seed.
    for counts in (Counter(ex.source for ex in examples), Counter(ex.goal for ex in examples)):
        assert set(counts) == set(range(10))
        assert all(380 < c < 620 for c in counts.values()), counts
    mids = Counter(ex.path[1] for ex in examples)  # intermediates are uniform too
    assert all(380 < mids[v] < 620 for v in range(10)), mids


def test_generate_example_uses_given_rng():
    spec = StarGraphSpec(deg=2, path=4, nodes=20)
    assert generate_example(spec, random.Random(5)) == generate_example(spec, random.Random(5))


def test_check_structure_rejects_broken_examples():
    check_structure(TINY, TINY_SPEC)
    bad = [
        Example(TINY.edges[:3], 4, 2, [4, 7, 2]),  # an edge missing
        Example(TINY.edges, 4, 9, [4, 7, 9]),  # path does not follow the edges
        Example(TINY.edges, 4, 7, [4, 7]),  # goal not a leaf
        Example([(4, 7), (1, 9), (7, 2), (4, 7)], 4, 2, [4, 7, 2]),  # label reused
        Example([(4, 7), (1, 19), (7, 2), (4, 1)], 4, 2, [4, 7, 2]),  # label 19 >= N
        Example([(4, 7), (1, 9), (7, 2), (9, 1)], 4, 2, [4, 7, 2]),  # a cycle instead of a second arm
    ]
    for ex in bad:
        with pytest.raises(ForesightError):
            check_structure(ex, TINY_SPEC)


# ---------------------------------------------------------------------------------------------- text format


def test_parse_paper_line():
    ex = parse_example(PAPER_LINE)
    assert ex.edges == [(32, 3), (16, 12), (3, 19), (32, 34), (34, 6), (6, 16), (19, 47), (47, 28)]
    assert (ex.source, ex.goal) == (32, 12)
    assert ex.path == [32, 34, 6, 16, 12]
    assert format_example(ex) == PAPER_LINE
    spec = infer_spec([ex])
    assert (spec.deg, spec.path, spec.nodes) == (2, 5, 48)
    check_structure(ex, spec)


def test_format_parse_round_trip():
    spec = StarGraphSpec(deg=3, path=4, nodes=25)
    for ex in generate(spec, 100, seed=2):
        assert parse_example(format_example(ex)) == ex
        assert parse_example(format_example(ex) + "\n") == ex


@pytest.mark.parametrize(
    "line, needle",
    [
        ("1,2|3", "'='"),
        ("1,2|3/1,2=1,2", "edge '3'"),
        ("a,b/1,2=1,2", "edge 'a,b'"),
        ("1,2/1,2", "'='"),
        ("1,2|2,3 1,3=1,2,3", "'/'"),
        ("1,2/1=1,2", "source,goal"),
        ("1,2/1,2=1,x", "path"),
        ("1,2/1,2=2,1", "from source to goal"),
        ("1,-2/1,-2=1,-2", ">= 0"),
    ],
)
def test_parse_malformed(line, needle):
    with pytest.raises(ForesightError, match=needle):
        parse_example(line)


def test_file_round_trip(tmp_path):
    spec = StarGraphSpec(deg=2, path=5, nodes=30)
    examples = generate(spec, 40, seed=4)
    path = tmp_path / "sub" / "train.txt"
    write_examples(path, examples)
    assert read_examples(path) == examples
    assert [p.name for p in path.parent.iterdir()] == ["train.txt"]  # no temporary file left behind
    # Empty lines (and a missing final newline) are tolerated.
    path.write_text("\n" + PAPER_LINE + "\n\n" + PAPER_LINE)
    assert read_examples(path) == [parse_example(PAPER_LINE)] * 2


def test_read_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(PAPER_LINE + "\n\n" + "1,2|3\n")
    with pytest.raises(ForesightError, match=r"bad\.txt, line 3: malformed"):
        read_examples(path)
    with pytest.raises(ForesightError, match="no such file.*missing.txt"):
        read_examples(tmp_path / "missing.txt")


def test_infer_spec():
    spec = StarGraphSpec(deg=3, path=4, nodes=40)
    examples = generate(spec, 30, seed=5)
    inferred = infer_spec(examples, nodes=40)
    assert inferred == spec
    assert infer_spec(examples).nodes <= 40
    with pytest.raises(ForesightError, match="raise nodes"):
        infer_spec(examples, nodes=5)
    with pytest.raises(ForesightError, match="same shape"):
        infer_spec(examples + generate(StarGraphSpec(2, 4, 40), 1, seed=0))
    with pytest.raises(ForesightError, match="zero examples"):
        infer_spec([])


# ---------------------------------------------------------------------------------------------- tokens


def test_encode_tiny_example_literally():
    # '|' = 10, '=' = 11, '/' = 12.
    assert encode(TINY, TINY_SPEC) == [4, 7, 10, 1, 9, 10, 7, 2, 10, 4, 1, 12, 4, 2, 11, 4, 7, 2]
    assert len(encode(TINY, TINY_SPEC)) == TINY_SPEC.prefix_len + TINY_SPEC.path == 18
    assert decode_tokens(encode(TINY, TINY_SPEC), TINY_SPEC) == "4 7 | 1 9 | 7 2 | 4 1 / 4 2 = 4 7 2"
    assert decode_tokens(torch.tensor([13, 99]), TINY_SPEC) == "$ <99?>"


def test_encode_rejects_misfits():
    with pytest.raises(ForesightError, match="outside 0..9"):
        encode(Example([(4, 7), (1, 19), (7, 2), (4, 1)], 4, 2, [4, 7, 2]), TINY_SPEC)
    with pytest.raises(ForesightError, match="does not fit"):
        encode(TINY, StarGraphSpec(deg=3, path=3, nodes=10))


def test_dataset_tokens_and_mask():
    data = StarGraphData([TINY], TINY_SPEC)
    assert len(data) == 1
    assert data.tokens.dtype == torch.long and data.tokens.shape == (1, 18)
    assert data.prefixes.tolist() == [[4, 7, 10, 1, 9, 10, 7, 2, 10, 4, 1, 12, 4, 2, 11]]
    assert data.paths.tolist() == [[4, 7, 2]]
    batch = data.batch(0, 1, seed=0)
    assert batch.seq_len == 17 and batch.tokens.shape == (1, 18)
    assert batch.loss_mask.dtype == torch.bool and batch.loss_mask.shape == (1, 17)
    assert batch.loss_mask[0].nonzero().flatten().tolist() == [14, 15, 16]
    # The masked positions read '=', s, v1 and their next tokens are exactly the path.
    assert batch.input_ids[0, 14].item() == TINY_SPEC.equals_id
    assert batch.tokens[0, 15:].tolist() == TINY.path


def test_batches_deterministic_and_cover_each_epoch():
    spec = StarGraphSpec(deg=2, path=4, nodes=20)
    data = StarGraphData(generate(spec, 100, seed=6), spec)
    bs = 10
    b0 = data.batch(4, bs, seed=1)
    assert torch.equal(b0.tokens, data.batch(4, bs, seed=1).tokens)
    fresh = StarGraphData(generate(spec, 100, seed=6), spec)  # a pure function: no hidden state
    assert torch.equal(b0.tokens, fresh.batch(4, bs, seed=1).tokens)
    assert not torch.equal(b0.tokens, data.batch(4, bs, seed=2).tokens)
    row_of = {tuple(r): i for i, r in enumerate(data.tokens.tolist())}
    assert len(row_of) == 100  # no duplicate rows at this size, so a row identifies its example

    def epoch_rows(epoch: int) -> list[int]:
        steps = range(epoch * 10, epoch * 10 + 10)
        return [row_of[tuple(r)] for s in steps for r in data.batch(s, bs, seed=1).tokens.tolist()]

    e0, e1 = epoch_rows(0), epoch_rows(1)
    assert sorted(e0) == sorted(e1) == list(range(100))  # disjoint batches, every example once per epoch
    assert e0 != e1  # a new order each epoch


def test_incomplete_last_batch_is_dropped():
    spec = StarGraphSpec(deg=2, path=4, nodes=20)
    data = StarGraphData(generate(spec, 103, seed=6), spec)
    assert data.batches_per_epoch(10) == 10
    # Step 10 opens epoch 1: a full batch, not the 3 left-over examples of epoch 0.
    assert data.batch(10, 10, seed=0).tokens.shape == (10, spec.prefix_len + spec.path)


def test_batch_errors():
    data = StarGraphData([TINY, TINY], TINY_SPEC)
    with pytest.raises(ForesightError, match="batch size 3"):
        data.batch(0, 3, seed=0)
    with pytest.raises(ForesightError, match="step"):
        data.batch(-1, 1, seed=0)
    with pytest.raises(ForesightError, match="no examples"):
        StarGraphData([], TINY_SPEC)
