"""prepare: text / JSON-lines / Parquet -> shards + metadata; counts, dtype, EOS between documents, determinism."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from foresight.data.prepare import PrepareConfig, is_validation, prepare
from foresight.data.shards import PreparedData
from foresight.data.sources import Documents, expand_inputs
from foresight.data.tokenizer import TextTokenizer, load_tokenizer, train_tokenizer

TEXTS = [f"document {i}: " + "some words and code() " * (i % 7 + 1) + f"end {i}\n" for i in range(60)]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return train_tokenizer(TEXTS, 320)


def _files(folder):
    """Docs 0-19 as text files, 20-39 as JSON lines, 40-59 as Parquet rows: 60 documents in this order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a_text").mkdir()
    for i in range(20):
        (folder / "a_text" / f"{i:02d}.txt").write_text(TEXTS[i])
    with open(folder / "b.jsonl", "w") as f:
        for i in range(20, 40):
            f.write(json.dumps({"id": i, "content": TEXTS[i]}) + "\n")
    pq.write_table(pa.table({"content": TEXTS[40:], "n": list(range(40, 60))}), folder / "c.parquet")
    return [str(folder / "a_text"), str(folder / "b.jsonl"), str(folder / "c.parquet")]


def _prepare(tmp_path, tok, out="out", **cfg):
    inputs = tmp_path / "in"
    files = _files(inputs) if not inputs.exists() else [str(inputs / "a_text"), str(inputs / "b.jsonl"),
                                                         str(inputs / "c.parquet")]
    docs = Documents(expand_inputs(files), text_field="content")
    return prepare(docs, tok, tmp_path / out, PrepareConfig(**{"val_fraction": 0.2, **cfg}), progress=False)


def test_shards_and_metadata_are_exact(tmp_path, tok):
    meta = _prepare(tmp_path, tok)
    data = PreparedData.open(tmp_path / "out", verify="full")
    assert meta["dtype"] == "uint16" and data.train.dtype == "uint16"
    assert meta["documents"] == 60 and meta["skipped"] == {}
    assert [s["documents"] for s in meta["sources"]] == [1] * 20 + [20, 20]
    expected = {"train": [], "val": []}
    for i, text in enumerate(TEXTS):  # documents in input order, each followed by EOS, split by document
        split = "val" if is_validation(0, i, 0.2) else "train"
        expected[split] += tok.encode(text) + [tok.eos_id]
    for split in ("train", "val"):
        stream = data.split(split)
        got = stream.read(0, len(stream))
        assert got.tolist() == expected[split]
        assert meta["splits"][split]["tokens"] == len(expected[split])
        assert meta["splits"][split]["documents"] == int(np.sum(got == tok.eos_id))
    assert 0 < meta["splits"]["val"]["documents"] < 30
    assert meta["tokenizer"]["sha256"] == tok.sha256 and meta["tokenizer"]["eos_id"] == tok.eos_id
    assert load_tokenizer(tmp_path / "out").sha256 == tok.sha256  # the tokenizer copy travels with the data


def test_preparation_is_deterministic(tmp_path, tok):
    _prepare(tmp_path, tok, "1", shard_tokens=500)
    _prepare(tmp_path, tok, "2", shard_tokens=500)
    files = sorted(p.relative_to(tmp_path / "1") for p in (tmp_path / "1").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".bin"]) > 2
    for rel in files:  # byte for byte, meta.json included
        assert (tmp_path / "1" / rel).read_bytes() == (tmp_path / "2" / rel).read_bytes(), rel


def test_shards_read_as_one_stream(tmp_path, tok):
    _prepare(tmp_path / "small", tok, shard_tokens=97)
    _prepare(tmp_path / "big", tok)
    small = PreparedData.open(tmp_path / "small" / "out", verify="full").train
    big = PreparedData.open(tmp_path / "big" / "out").train
    assert len(small.maps) > 3 and len(small) == len(big)
    for start, length in [(0, 97), (90, 20), (95, 300), (len(big) - 5, 5)]:
        assert small.read(start, length).tolist() == big.read(start, length).tolist()


def test_large_vocabulary_uses_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70000)}
    vocab["</s>"] = 70000
    raw = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    raw.save(str(tmp_path / "tok" / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tok")  # EOS found among the usual names: </s>
    assert tok.eos_id == 70000 and tok.vocab_size == 70001
    (tmp_path / "d.txt").write_text("w1 w69999 w5")
    meta = prepare(Documents([tmp_path / "d.txt"]), tok, tmp_path / "out", PrepareConfig(val_fraction=0.0),
                   progress=False)
    assert meta["dtype"] == "uint32"
    data = PreparedData.open(tmp_path / "out", verify="full")
    assert data.train.read(0, 4).tolist() == [1, 69999, 5, 70000]


@pytest.mark.parametrize("unit, expected", [
    ("file", ["a\nb\n\nc d\n"]),
    ("line", ["a", "b", "c d"]),
    ("paragraph", ["a\nb", "c d"]),
])
def test_text_units(tmp_path, unit, expected):
    (tmp_path / "t.txt").write_text("a\nb\n\nc d\n")
    assert list(Documents([tmp_path / "t.txt"], text_unit=unit)) == expected


def test_gzip_and_glob_inputs(tmp_path):
    import gzip

    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'))
    (tmp_path / "y.txt").write_text("three")
    files = expand_inputs([str(tmp_path / "*.gz"), str(tmp_path / "y.txt")])
    assert list(Documents(files)) == ["one", "two", "three"]


def test_a_dataset_by_name_or_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text('{"body": "first"}\n{"body": "second"}\n')
    docs = Documents(dataset=(str(tmp_path / "ds"), None, "train"), text_field="body")
    assert list(docs) == ["first", "second"] and docs.sources[0]["documents"] == 2
