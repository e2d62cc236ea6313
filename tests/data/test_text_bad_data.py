"""Bad data never becomes a silently wrong dataset: one clear error line, or a counted and reported skip."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from foresight.data.loader import make_batch
from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.shards import PreparedData
from foresight.data.sources import Documents, expand_inputs
from foresight.data.tokenizer import train_tokenizer
from foresight.errors import ForesightError

TEXTS = ["alpha beta gamma delta " * 5, "one two three four five " * 5, "print('hello world')\n" * 5]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


def _error(fn) -> str:
    with pytest.raises(ForesightError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


def _docs(*paths, **kw):
    return Documents(expand_inputs([str(p) for p in paths]), **kw)


def _run(tok, docs, out, **cfg):
    return prepare(docs, tok, out, PrepareConfig(**{"val_fraction": 0.0, **cfg}), progress=False)


def test_empty_files_and_documents_are_skipped_and_counted(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n")
    (tmp_path / "ok.txt").write_text(TEXTS[0])
    (tmp_path / "r.jsonl").write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": TEXTS[1]}) + "\n")
    meta = _run(tok, _docs(tmp_path / "empty.txt", tmp_path / "blank.txt", tmp_path / "ok.txt", tmp_path / "r.jsonl"),
                tmp_path / "out")
    assert meta["documents"] == 2
    assert meta["skipped"] == {"empty document": 1, "empty file": 2}


def test_nothing_but_empty_input_is_an_error(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("")
    message = _error(lambda: _run(tok, _docs(tmp_path / "empty.txt"), tmp_path / "out"))
    assert "no documents" in message and "1 empty file" in message
    assert not (tmp_path / "out").exists()  # nothing half-written is left behind
    assert not list(tmp_path.glob(".out.partial*"))


def test_invalid_utf8_names_the_place_or_is_skipped(tmp_path, tok):
    (tmp_path / "bad.txt").write_bytes(b"fine line\nbroken \xff\xfe byte\n")
    (tmp_path / "good.txt").write_text(TEXTS[0])
    message = _error(lambda: _run(tok, _docs(tmp_path / "bad.txt", tmp_path / "good.txt"), tmp_path / "out"))
    assert "bad.txt, line 2" in message and "invalid UTF-8" in message and "--skip-bad" in message
    meta = _run(tok, _docs(tmp_path / "bad.txt", tmp_path / "good.txt", skip_bad=True), tmp_path / "out")
    assert meta["documents"] == 1 and meta["skipped"] == {"invalid UTF-8": 1}


def test_jsonl_problems(tmp_path, tok):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([json.dumps({"text": TEXTS[0]}), "{broken", json.dumps({"body": "x"}),
                               json.dumps({"text": 5})]) + "\n")
    assert "r.jsonl, line 2: invalid JSON" in _error(lambda: _run(tok, _docs(path), tmp_path / "o"))
    path.write_text(json.dumps({"body": "x", "id": 1}) + "\n")
    message = _error(lambda: _run(tok, _docs(path), tmp_path / "o"))
    assert "line 1 (has: body, id): no field 'text'" in message and "--text-field" in message
    path.write_text(json.dumps({"text": 5}) + "\n")
    assert "not a string" in _error(lambda: _run(tok, _docs(path), tmp_path / "o"))
    path.write_text("\n".join([json.dumps({"text": TEXTS[0]}), "{broken", json.dumps({"body": "x"}),
                               json.dumps({"text": 5})]) + "\n")
    meta = _run(tok, _docs(path, skip_bad=True), tmp_path / "o")
    assert meta["documents"] == 1
    assert meta["skipped"] == {"field 'text' is not a string": 1, "invalid JSON": 1, "no field 'text'": 1}
    path.write_text(json.dumps([{"text": "a"}]))
    assert "JSON array" in _error(lambda: _run(tok, _docs(path), tmp_path / "o2"))


def test_parquet_without_the_column(tmp_path, tok):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    message = _error(lambda: _run(tok, _docs(tmp_path / "t.parquet"), tmp_path / "o"))
    assert "no column 'text' (columns: body)" in message
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in _error(lambda: _run(tok, _docs(tmp_path / "junk.parquet"), tmp_path / "o"))


def test_missing_inputs_and_existing_output(tmp_path, tok):
    assert "no such file" in _error(lambda: expand_inputs([str(tmp_path / "nope.txt")]))
    assert "matches no file" in _error(lambda: expand_inputs([str(tmp_path / "*.nothing")]))
    (tmp_path / "a.txt").write_text(TEXTS[0])
    _run(tok, _docs(tmp_path / "a.txt"), tmp_path / "out")
    assert "--overwrite" in _error(lambda: _run(tok, _docs(tmp_path / "a.txt"), tmp_path / "out"))
    prepare(_docs(tmp_path / "a.txt"), tok, tmp_path / "out", PrepareConfig(val_fraction=0.0), overwrite=True,
            progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    message = _error(lambda: prepare(_docs(tmp_path / "a.txt"), tok, tmp_path / "mine", PrepareConfig(),
                                     overwrite=True, progress=False))
    assert "refusing" in message and (tmp_path / "mine" / "precious.txt").exists()


@pytest.fixture
def prepared(tmp_path, tok):
    (tmp_path / "a.txt").write_text(" ".join(TEXTS) * 20)
    _run(tok, _docs(tmp_path / "a.txt"), tmp_path / "data")
    return tmp_path / "data"


def test_a_shard_that_does_not_match_its_metadata(prepared):
    shard = prepared / "train_00000.bin"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-2])  # one token short
    assert "holds" in _error(lambda: PreparedData.open(prepared)) and "re-run foresight prepare" in \
        _error(lambda: PreparedData.open(prepared))
    flipped = bytearray(raw)
    flipped[10] ^= 1  # same size, other content: only the hash check sees it
    shard.write_bytes(bytes(flipped))
    PreparedData.open(prepared)  # the cheap check passes ...
    assert "SHA-256" in _error(lambda: PreparedData.open(prepared, verify="full"))  # ... the full one does not
    shard.unlink()
    assert "missing" in _error(lambda: PreparedData.open(prepared))


def test_ids_outside_the_vocabulary(prepared):
    shard = prepared / "train_00000.bin"
    ids = np.fromfile(shard, dtype="<u2")
    ids[3] = 60000  # beyond the 300-token vocabulary; update the hash so only the range check can catch it
    ids.tofile(shard)
    meta = json.loads((prepared / "meta.json").read_text())
    from foresight.data.shards import file_sha256

    meta["splits"]["train"]["shards"][0]["sha256"] = file_sha256(shard)
    (prepared / "meta.json").write_text(json.dumps(meta))
    assert "token id 60000, outside the tokenizer's vocabulary of 300" in \
        _error(lambda: PreparedData.open(prepared, verify="full"))
    tokens = torch.tensor([[1, 2, 3, 299, 300]])
    assert "outside the model's vocabulary of 300" in _error(lambda: make_batch(tokens, 4, 300, 0, True))


def test_damaged_metadata_and_tokenizer(prepared, tmp_path):
    assert "no meta.json" in _error(lambda: PreparedData.open(tmp_path / "elsewhere"))
    (prepared / "tokenizer" / "tokenizer.json").write_text("{}")
    assert "does not match the tokenizer hash" in _error(lambda: PreparedData.open(prepared))
    (prepared / "meta.json").write_text("{truncated")
    assert "not valid JSON" in _error(lambda: PreparedData.open(prepared))
