"""benchmarks/decode_table.py runs end to end on a tiny random model: foresight and HF rows; without a GGUF the
llama.cpp rows are skipped."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

from helpers import randomize_weights

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
WORDS = "def return x y if else for in range print the a of to is what".split()


def _import(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _folders(tmp_path):
    """A tiny exported HF folder with a word-level tokenizer, and a fake HumanEval file of 3 problems."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from foresight.hf import export_lm

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), hidden_size=24, n_layers=2, n_heads=3, n_kv_heads=1,
                      intermediate_size=40, max_seq_len=256)
    lm = TrainableLM(cfg, [{"name": "ntp"}])
    randomize_weights(lm, 1)
    export_lm(lm.eval(), [{"name": "ntp"}], tmp_path / "hf", tokenizer=tmp_path / "tok")
    problems = [{"task_id": f"T/{i}", "entry_point": "f", "prompt": "def f ( x ) : \n for y in range ( x ) :",
                 "canonical_solution": " return x if y else x"} for i in range(3)]
    data = tmp_path / "HumanEval.jsonl.gz"
    data.write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in problems).encode()))
    return tmp_path / "hf", data


def test_decode_table_runs_end_to_end_and_checks_outputs(tmp_path):
    table = _import("decode_table")
    hf, data = _folders(tmp_path)
    out = tmp_path / "table.md"
    text = table.main(["--hf", str(hf), "--humaneval", "2", "--humaneval-data", str(data), "--edit", "1",
                       "--chat", "1", "--new-tokens", "5", "--repeats", "1", "--threads", "1", "--out", str(out),
                       "--json", str(tmp_path / "t.json")])
    assert out.read_text() == text
    assert "llama.cpp rows skipped: no --gguf given" in text
    summary = json.loads((tmp_path / "t.json").read_text())["1"]["summary"]
    assert set(summary) == {"humaneval", "edit", "chat"}
    for c, rows in summary.items():
        # foresight + ngram and HF greedy decode the same fp32 model greedily: the same tokens on every prompt
        for name in ("foresight greedy", "foresight + ngram", "HF greedy", "HF prompt lookup"):
            assert rows[name]["identical"] == rows[name]["prompts"], (c, name)
        assert rows["foresight greedy"]["ratio"] == 1.0
        assert rows["foresight greedy"]["prompt_ratio_mean"] == 1.0 and rows["foresight greedy"]["prompts_faster"] == 0
        assert 0 < rows["foresight greedy"]["tokens"] <= 5
    assert "| foresight + ngram |" in text and "| HF prompt lookup |" in text and "Targets at 1 thread(s)" in text
    # the plain-greedy target compares foresight's fastest exact greedy row (default or packed) with HF greedy
    assert re.search(r"\| plain greedy ≥ 1\.5× HF generate: HumanEval \| [0-9.]+× \(foresight (packed )?greedy\) \|",
                     text)
    only = table.main(["--hf", str(hf), "--humaneval", "2", "--humaneval-data", str(data), "--edit", "0",
                       "--chat", "0", "--new-tokens", "4", "--repeats", "1", "--threads", "1",
                       "--only", "HF prompt lookup"])
    assert "| HF prompt lookup |" in only and "| foresight greedy |" in only and "| HF greedy |" not in only
    assert "per prompt: mean" not in only  # no speculative foresight row kept: no HumanEval speed-up target line
    with pytest.raises(table.ForesightError, match="--only: no row named 'HF lookup'"):
        table.main(["--hf", str(hf), "--humaneval-data", str(data), "--humaneval", "1", "--edit", "0", "--chat",
                    "0", "--new-tokens", "2", "--repeats", "1", "--threads", "1", "--only", "HF lookup"])
    with pytest.raises(table.ForesightError, match="--rows: unknown vllm"):
        table.main(["--hf", str(hf), "--humaneval-data", str(data), "--humaneval", "1", "--rows", "hf,vllm"])


def test_prompt_rules_are_fixed_and_edits_copy_the_code(tmp_path):
    prompts = _import("decode_prompts")
    problems = [{"entry_point": "add", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n"},
                {"entry_point": "neg", "prompt": "def neg(v):\n", "canonical_solution": "    return -v\n"}]
    assert "rename the function `add` to `add_v2`" in prompts.edit_instruction(problems[0], 0)
    odd = prompts.edit_instruction(problems[0], 1)
    assert "rename the parameter `a` to `a_in`" in odd and "def add(a, b):\n    return a + b\n```" in odd

    class Tok:  # no chat template: the plain User/Assistant form
        chat_template = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    got = prompts.build_prompts(Tok(), problems, 1, 2, 0)
    assert list(got) == ["humaneval", "edit"] and len(got["edit"]) == 2
    assert got == prompts.build_prompts(Tok(), problems, 1, 2, 0)  # deterministic
    with pytest.raises(prompts.ForesightError, match="--humaneval 3"):
        prompts.build_prompts(Tok(), problems, 3, 0, 0)


@pytest.mark.slow
def test_llama_cpp_rows_decode_the_smollm2_gguf():
    # The real GGUF when it is cached (scripts/fetch_smollm2) and llama-cpp-python is installed; else skipped.
    pytest.importorskip("llama_cpp")
    smollm2 = _import("smollm2")
    if not smollm2.gguf_path().is_file():
        pytest.skip("SmolLM2 GGUF not cached (scripts/fetch_smollm2)")
    table = _import("decode_table")
    ids = [1, 504, 3458, 314, 260, 1345, 28, 504, 3458, 314]  # repeats itself, so prompt lookup has matches
    rows = table.llama_variants(smollm2.gguf_path(), 1, 64, 6, 2, 10)
    try:
        greedy, lookup = (row.run(ids)[0] for row in rows)
        assert greedy == rows[0].run(ids)[0]  # a second run starts afresh (no cached prompt reused)
    finally:
        for row in rows:
            row.close()
    assert 1 <= len(greedy) <= 6 and all(isinstance(t, int) for t in greedy)
    assert 1 <= len(lookup) <= 6


def test_a_model_with_heads_gets_a_row_per_drafter_and_all_decode_greedy():
    table = _import("decode_table")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=29, hidden_size=24, n_layers=3, n_heads=3, n_kv_heads=1, intermediate_size=40,
                      max_seq_len=64)
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "mtp", "n": 3}])
    randomize_weights(lm, 2)
    rows = table.foresight_variants(lm.eval(), "foresight", 9, None, 3)
    assert [r.name for r in rows] == ["foresight greedy", "foresight + ngram", "foresight + ngram (auto block)",
                                      "foresight + mtp", "foresight + ngram+mtp"]
    ids = [3, 5, 7, 3, 5, 7, 11, 3, 5]
    want = rows[0].run(ids)[0]
    assert len(want) == 9
    for row in rows[1:]:
        got, tau = row.run(ids)
        assert got == want and tau >= 1.0, row.name
    assert table.until_eos([4, 2, 5, 2], 2) == [4, 2] and table.until_eos([4, 5], 2) == [4, 5]
