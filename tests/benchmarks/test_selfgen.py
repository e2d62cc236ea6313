"""Prompts of benchmarks/selfgen.py: they end right after a function's docstring (as HumanEval prompts do), have
the asked length, and are the same for the same seed."""

from __future__ import annotations

import torch
from selfgen import docstring_ends, make_prompts

SOURCE = '''import os


def f(x):
    """Add one.

    More text."""
    return x + 1


class C:
    async def g(self):
        \'\'\'One line.\'\'\'
        pass

    def h(self):
        return 2
'''


def test_docstring_ends_are_just_after_each_docstring():
    ends = docstring_ends(SOURCE)
    assert [SOURCE[:e].splitlines()[-1].strip() for e in ends] == ['More text."""', "'''One line.'''"]
    assert all(SOURCE[e - 1] == "\n" for e in ends)  # the newline after the closing quotes is included
    assert docstring_ends("def broken(:\n") == []


class CharTok:
    def encode(self, text: str) -> list[int]:
        return [ord(c) % 97 for c in text]


def test_prompts_have_the_length_end_at_docstrings_and_are_seeded(tmp_path):
    files = []
    for i in range(3):
        path = tmp_path / f"m{i}.py"
        path.write_text(SOURCE.replace("Add one", f"Add {i}"))
        files.append(path)
    a, origin = make_prompts(CharTok(), files, 7, 12, window_frac=2 / 7, seed=3)
    b, _ = make_prompts(CharTok(), files, 7, 12, window_frac=2 / 7, seed=3)
    assert a.shape == (7, 12) and a.dtype == torch.long and torch.equal(a, b)
    docs = [row for row, o in zip(a.tolist(), origin) if "@" in o]
    assert len(docs) == 5  # 6 docstrings in all, 7 - 2 windows wanted
    endings = {tuple(CharTok().encode(SOURCE[:e])[-12:]) for e in docstring_ends(SOURCE)}
    assert all(tuple(row) in endings for row in docs)
    c, _ = make_prompts(CharTok(), files, 7, 12, window_frac=2 / 7, seed=4)
    assert not torch.equal(a, c)
