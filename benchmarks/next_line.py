"""Next-line completion on held-out code: a cheap generative metric for continued training (issue 14, item 4).

The TOP paper (§4.3) scores continued-trained models on generation, not only on loss. At CPU scale we use
line-level code completion as CodeXGLUE defines it: given the tokens before a line, the model greedily writes
that line; we report exact match (the stripped line equals the reference) and edit similarity
(``difflib.SequenceMatcher`` ratio of the stripped lines, in [0, 1]).

Examples come straight from a held-out token stream, so prompts are tokenized exactly as in training: a line
starts after a token whose text ends in a newline plus optional indentation (the indentation stays in the
prompt); every prompt is exactly ``context`` tokens long and lies inside one document, so a batch needs no
padding. Decoding uses the KV cache and stops once every row has written a newline.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from foresight.errors import ForesightError


@dataclass
class LineExamples:
    prompts: torch.Tensor  # (N, context) long: the tokens before each line
    targets: list[str]  # the reference lines (text up to, not including, the newline)
    starts: list[int]  # position of each line's first token in the stream


def _newline_ids(ids: np.ndarray, decode: Callable[[list[int]], str]) -> tuple[set[int], set[int]]:
    """Of the distinct ``ids``: those whose text holds a newline, and of those the ones whose text ends in a
    newline plus optional spaces/tabs (a line may start right after them)."""
    has, opens = set(), set()
    for i in np.unique(ids).tolist():
        text = decode([i])
        if "\n" in text:
            has.add(i)
            if text[text.rindex("\n") + 1:].strip(" \t") == "":
                opens.add(i)
    return has, opens


def line_examples(tokens: np.ndarray, decode: Callable[[list[int]], str], *, n: int, context: int,
                  max_line_tokens: int, eos_id: int | None, seed: int = 0, min_chars: int = 4) -> LineExamples:
    """``n`` seeded next-line examples from a token stream (1-D ints).

    A candidate line starts at position i when token i - 1 opens a line (``_newline_ids``), its tokens
    i .. j - 1 plus the newline-carrying token j number at most ``max_line_tokens``, its stripped text has at
    least ``min_chars`` characters, and tokens i - context .. j hold no ``eos_id`` (one document)."""
    tokens = np.asarray(tokens).astype(np.int64)
    if n < 1 or context < 1 or max_line_tokens < 1:
        raise ForesightError("next-line examples: n, context and max_line_tokens must be >= 1")
    has_nl, opens = _newline_ids(tokens, decode)
    nl_pos = np.flatnonzero(np.isin(tokens, list(has_nl)))  # positions of newline-carrying tokens
    eos_pos = np.flatnonzero(tokens == eos_id) if eos_id is not None else np.zeros(0, dtype=np.int64)
    candidates = []
    for p in nl_pos:
        i = int(p) + 1
        if tokens[p] not in opens or i < context:
            continue
        k = np.searchsorted(nl_pos, i)  # the first newline token at or after i ends the line
        if k == len(nl_pos) or nl_pos[k] - i + 1 > max_line_tokens:
            continue
        j = int(nl_pos[k])
        e = np.searchsorted(eos_pos, i - context)
        if e < len(eos_pos) and eos_pos[e] <= j:
            continue
        line = decode(tokens[i : j + 1].tolist()).split("\n", 1)[0]
        if len(line.strip()) >= min_chars:
            candidates.append((i, line))
    if len(candidates) < n:
        raise ForesightError(f"next-line examples: the stream holds only {len(candidates)} usable lines, "
                             f"fewer than the {n} asked for; lower the count or the context")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(candidates), size=n, replace=False).tolist())
    starts = [candidates[c][0] for c in chosen]
    prompts = torch.from_numpy(np.stack([tokens[s - context : s] for s in starts]))
    return LineExamples(prompts, [candidates[c][1] for c in chosen], starts)


@torch.no_grad()
def complete_lines(model, prompts: torch.Tensor, decode: Callable[[list[int]], str], max_new_tokens: int,
                   batch: int = 16) -> list[str]:
    """Greedy completion of each prompt (N, C) up to its first newline (or ``max_new_tokens`` tokens), with
    the KV cache, ``batch`` rows at a time; returns the text before the newline."""
    model.eval()
    device = next(model.parameters()).device
    lines = []
    for first in range(0, prompts.shape[0], batch):
        rows = prompts[first : first + batch].to(device)
        caches = model.new_caches()
        logits = model(rows, caches)[:, -1, :]  # prefill: (b, V)
        texts = [[] for _ in range(rows.shape[0])]
        for step in range(max_new_tokens):
            nxt = logits.argmax(dim=-1)  # (b,)
            for r, t in enumerate(nxt.tolist()):
                texts[r].append(t)
            done = ["\n" in decode(ids) for ids in texts]
            if all(done) or step + 1 == max_new_tokens:
                break
            logits = model(nxt[:, None], caches)[:, -1, :]
        lines += [decode(ids).split("\n", 1)[0] for ids in texts]
    return lines


def score_lines(references: list[str], completions: list[str]) -> dict[str, float]:
    """Exact match and mean edit similarity of stripped lines (CodeXGLUE line-level completion)."""
    if len(references) != len(completions) or not references:
        raise ForesightError("score_lines: needs as many completions as references, at least one")
    pairs = [(r.strip(), c.strip()) for r, c in zip(references, completions)]
    exact = sum(r == c for r, c in pairs) / len(pairs)
    similarity = sum(difflib.SequenceMatcher(None, r, c).ratio() for r, c in pairs) / len(pairs)
    return {"exact_match": exact, "edit_similarity": similarity}
