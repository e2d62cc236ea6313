"""Next-line completion (benchmarks/next_line.py): example selection on a character-level stream, greedy
completion against plain ``generate``, and the two scores on hand-worked lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from next_line import complete_lines, line_examples, score_lines

from foresight.errors import ForesightError
from foresight.generate.sampling import generate
from foresight.model import ModelConfig, Transformer

from helpers import randomize_weights

pytestmark = pytest.mark.usefixtures("one_thread")

EOS = 0


def _decode(ids) -> str:  # id 0 is EOS ("|"), every other id is its character
    return "".join("|" if i == EOS else chr(i) for i in ids)


def _encode(text: str) -> np.ndarray:
    return np.array([EOS if c == "|" else ord(c) for c in text], dtype=np.int64)


TEXT = "def f(x):\n    return x\n\nab\nclass A:\n    pass|import os\nx = os.sep\nlong line here\n"


def test_examples_are_exactly_the_usable_lines():
    tokens = _encode(TEXT)
    # usable: "    return x" (12 chars + newline = 13 tokens: too long) no; "class A:" yes; "    pass" ends in
    # EOS, not a newline, so it is no line; "x = os.sep" (context crosses EOS? 5 tokens back: "t os\n" no) yes;
    # "long line here" (15 tokens) too long; "ab" too short; "" blank.
    with pytest.raises(ForesightError, match="only 2 usable lines"):
        line_examples(tokens, _decode, n=3, context=5, max_line_tokens=11, eos_id=EOS, min_chars=3)
    ex = line_examples(tokens, _decode, n=2, context=5, max_line_tokens=11, eos_id=EOS, min_chars=3)
    assert ex.targets == ["class A:", "x = os.sep"]
    for start, prompt, target in zip(ex.starts, ex.prompts, ex.targets):
        assert prompt.tolist() == tokens[start - 5 : start].tolist()  # exactly the tokens before the line
        assert _decode(tokens[start : start + len(target)]) == target
    # A context reaching back past the EOS drops "x = os.sep"; a longer line budget admits "long line here".
    wide = line_examples(tokens, _decode, n=2, context=13, max_line_tokens=15, eos_id=EOS, min_chars=3)
    assert wide.targets == ["class A:", "long line here"]


def test_indentation_stays_in_the_prompt():
    indent = 1000  # one token "\n    ", as byte-level BPE tokenizers write a newline and indentation
    tokens = np.concatenate([_encode("if a:"), [indent], _encode("b = 1\n")])

    def decode(ids):
        return "".join("\n    " if i == indent else chr(i) for i in ids)

    ex = line_examples(tokens, decode, n=1, context=3, max_line_tokens=10, eos_id=None, min_chars=3)
    assert ex.targets == ["b = 1"] and decode(ex.prompts[0].tolist()).endswith("    ")


def test_completion_equals_plain_greedy_cut_at_the_newline():
    V = 14  # ids 1..13 decode to letters, id 10 is the newline: a random model writes it now and then
    cfg = ModelConfig(vocab_size=V, hidden_size=16, n_layers=2, n_heads=2, n_kv_heads=1, intermediate_size=24)
    torch.manual_seed(4)
    model = Transformer(cfg)
    randomize_weights(model, 4)  # O(1) logits: greedy rows differ and some write a newline

    def decode(ids):
        return "".join("\n" if i == 10 else chr(ord("a") + i) for i in ids)

    prompts = torch.randint(0, V, (5, 7), generator=torch.Generator().manual_seed(1))
    got = complete_lines(model, prompts, decode, max_new_tokens=9, batch=2)
    full = generate(model, prompts, 9)[:, 7:]
    want = [decode(row.tolist()).split("\n", 1)[0] for row in full]
    assert got == want
    assert 0 < sum(len(w) < 9 for w in want) < len(want)  # some rows stop at a newline, others run to the end


def test_scores():
    s = score_lines(["  return x", "a = 1", "abcd"], ["return x  ", "a = 2", "wxyz"])
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["edit_similarity"] == pytest.approx((1 + 0.8 + 0) / 3)
    with pytest.raises(ForesightError, match="as many completions"):
        score_lines(["a"], [])
