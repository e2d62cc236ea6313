"""Tokenizer: a trained byte-level BPE loads with AutoTokenizer and round-trips text; any local tokenizer loads."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from foresight.data.tokenizer import load_tokenizer, train_tokenizer
from foresight.errors import ForesightError

DOCS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n" * 5,
    "Ünïcödé, emoji 🙂, tabs\tand\r\nCRLF; 数字 123 456.",
] * 3
SAMPLES = ["def add(a, b):\n    return a + b\n", "  leading spaces, Ünïcödé 🙂 数字\n\ttab\r\n", "", "x" * 50]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer(DOCS, 300)
    tok.save(out)
    return tok, out


def test_trained_tokenizer_loads_with_auto_tokenizer_and_round_trips(trained):
    tok, out = trained
    assert tok.vocab_size == 300 and tok.eos_id == 0 and tok.eos_token == "<|endoftext|>"
    hf = AutoTokenizer.from_pretrained(str(out))
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 0
    for text in SAMPLES:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == text == tok.decode(ids)  # byte-level: every string round-trips


def test_training_is_deterministic(trained):
    tok, _ = trained
    again = train_tokenizer(DOCS, 300)
    assert again.files == tok.files and again.sha256 == tok.sha256


def test_special_token_text_is_not_a_document_boundary(trained):
    tok, _ = trained
    ids = tok.encode("before <|endoftext|> after")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "before <|endoftext|> after"


def test_every_local_form_loads_to_the_same_tokenizer(trained, tmp_path):
    tok, out = trained
    assert load_tokenizer(out).sha256 == tok.sha256  # a folder
    assert load_tokenizer(out / "tokenizer.json").sha256 == tok.sha256  # the file
    nested = tmp_path / "prepared"
    tok.save(nested / "tokenizer")
    assert load_tokenizer(nested).sha256 == tok.sha256  # prepared data / a run folder


def test_eos_from_config_candidates_or_flag(trained, tmp_path):
    tok, out = trained
    data = json.loads((out / "tokenizer.json").read_text())
    data["added_tokens"][0]["content"] = "<my-end>"  # no known EOS name, no config
    vocab = data["model"]["vocab"]
    vocab["<my-end>"] = vocab.pop("<|endoftext|>")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data))
    with pytest.raises(ForesightError, match="--eos"):
        load_tokenizer(bare)
    assert load_tokenizer(bare, eos="<my-end>").eos_id == 0
    with pytest.raises(ForesightError, match="not a token"):
        load_tokenizer(bare, eos="<nope>")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "cfg" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<my-end>"}}))
    assert load_tokenizer(tmp_path / "cfg").eos_token == "<my-end>"


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing", "tokenizer not found"),
    (lambda p: (p / "junk.json").write_text("{not json") and p / "junk.json", "not a readable tokenizer.json"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no tokenizer"),
])
def test_bad_tokenizer_is_one_clear_error(tmp_path, make, needle):
    with pytest.raises(ForesightError, match=needle) as err:
        load_tokenizer(make(tmp_path))
    assert "\n" not in str(err.value)


def test_vocab_size_too_small():
    with pytest.raises(ForesightError, match="at least 257"):
        train_tokenizer(DOCS, 100)
