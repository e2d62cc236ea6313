"""GGUF import: tiny GGUF files written with the gguf package's writer (``tests/gguf_helpers.py``: llama.cpp's
tensor names and its q/k row permutation for Llama) become foresight models with the original model's logits;
quantised files match transformers' own GGUF loader; bad files fail with one line. The real SmolLM2 file is checked
when fetched."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.hf.gguf import gguf_file, import_gguf, inspect_gguf, is_gguf, logit_difference
from foresight.train.lm import TrainableLM

from gguf_helpers import hf_model as _hf_model
from gguf_helpers import write_gguf

transformers = pytest.importorskip("transformers")
TOL = 1e-4
IDS = torch.randint(0, 259, (2, 13), generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def _needs_gguf():
    pytest.importorskip("gguf")


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind, tie", [("llama", True), ("llama", False), ("qwen2", True)])
def test_f32_gguf_imports_the_original_model(tmp_path, kind, tie):
    """Unquantised: the imported trunk computes the model the file was written from (q/k permutation undone)."""
    model = _hf_model(kind, tie=tie)
    path = write_gguf(tmp_path / "m.gguf", model, kind)
    lm, specs, report, loaded = import_gguf(path)
    assert specs == [{"name": "ntp"}] and report.trunk_tensors == len(lm.model.state_dict()) - tie
    cfg = lm.model.cfg
    assert (cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (2, 64, 4, 2, 260)
    assert cfg.tie_embeddings == tie and cfg.qkv_bias == (kind == "qwen2") and cfg.rope_theta == 500.0
    with torch.no_grad():
        assert (lm.model(IDS) - _logits(model)).abs().max().item() <= TOL
    assert logit_difference(lm, loaded) <= TOL


def test_quantised_gguf_matches_transformers_and_dequantised_weights(tmp_path):
    """Q8_0 matrices: logits equal transformers' GGUF model; an unpermuted matrix equals gguf's dequantisation."""
    import gguf

    model = _hf_model("llama", seed=1)
    path = write_gguf(tmp_path / "q.gguf", model, quant="Q8_0")
    info = inspect_gguf(path)
    assert info.architecture == "llama" and info.tensor_types == {"Q8_0": 15, "F32": 5}
    lm, _, _, loaded = import_gguf(path)
    with torch.no_grad():
        assert (lm.model(IDS) - _logits(loaded)).abs().max().item() <= TOL
        # Quantisation changed the function, a little: the test model is not the original model any more.
        assert (lm.model(IDS) - _logits(model)).abs().max().item() > 1e-3
    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    want = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type).copy())  # (intermediate, hidden)
    assert torch.equal(lm.model.layers[1].mlp.up_proj.weight, want)


def test_cli_import_gguf_with_tokenizer_and_verify(tmp_path, capsys):
    from transformers import AutoTokenizer

    from foresight.data.tokenizer import load_tokenizer

    model = _hf_model("llama", seed=2)
    folder = tmp_path / "src"
    folder.mkdir()
    write_gguf(folder / "tiny.gguf", model)
    assert is_gguf(folder) and gguf_file(folder).name == "tiny.gguf"
    out = tmp_path / "out"
    assert main(["import", str(folder), "--out", str(out), "--objectives", "ntp,top", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "imported Llama (2 layers, d=64, vocab 260" in text and "heads: top fresh" in text
    diff = float(re.search(r"max \|logits difference\| = (\S+)", text)[1])
    assert diff <= TOL
    lm, _ = TrainableLM.from_checkpoint(out / "step_00000000.safetensors")
    with torch.no_grad():
        assert (lm.model(IDS) - _logits(model)).abs().max().item() <= TOL
    # The tokenizer: the same ids as transformers' GGUF tokenizer, merges applied, readable by foresight.
    theirs = AutoTokenizer.from_pretrained(str(folder), gguf_file="tiny.gguf")
    ours = load_tokenizer(out / "tokenizer")
    sample = "the cat then\nthe end"
    ids = ours.tokenizer.encode(sample).ids
    assert ids == theirs(sample)["input_ids"]
    assert 258 in ids and len(ids) < len(sample.encode())  # "Ġthe" merged


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("foresight: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_gguf_files_fail_with_one_line(tmp_path, capsys):
    model = _hf_model("llama", seed=3)
    good = write_gguf(tmp_path / "good.gguf", model, quant="Q8_0")
    out = ["--out", str(tmp_path / "out")]
    # unsupported architecture
    other = write_gguf(tmp_path / "phi.gguf", model, arch="phi3")
    assert "architecture 'phi3' is not supported" in _one_line_error(capsys, ["import", str(other), *out])
    # a tensor type gguf-py cannot dequantise (F64)
    f64 = write_gguf(tmp_path / "f64.gguf", model, extra={"extra.weight": np.ones((2, 32), dtype=np.float64)})
    assert "stored as F64" in _one_line_error(capsys, ["import", str(f64), *out])
    # truncated, at several places (header, tensor infos, data)
    data = good.read_bytes()
    for keep in (100, len(data) // 3, len(data) - 7):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        err = _one_line_error(capsys, ["import", str(cut), *out])
        assert "truncated" in err, err
    # not a GGUF file, and a folder with two
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    assert "not a GGUF file" in _one_line_error(capsys, ["import", str(tmp_path / "fake.gguf"), *out])
    assert "*.gguf files" in _one_line_error(capsys, ["import", str(tmp_path), *out])
    assert not (tmp_path / "out").exists()


def test_a_gguf_header_asking_for_more_than_its_tensors_is_one_line(tmp_path, capsys):
    """transformers builds the model from the header's numbers: a small file saying width 8192 x 200 blocks
    would be allocated (6.7G parameters) before any tensor is read; the header is checked first."""
    model = _hf_model("llama", seed=3)
    model.config.hidden_size, model.config.num_hidden_layers = 8192, 200  # the header only; tensors stay tiny
    path = write_gguf(tmp_path / "claims.gguf", model)
    err = _one_line_error(capsys, ["import", str(path), "--out", str(tmp_path / "out")])
    assert "header describes a model of at least" in err and "width 8,192, 200 blocks" in err, err
    model.config.hidden_size = 1 << 20
    path = write_gguf(tmp_path / "past.gguf", model)
    assert "embedding_length must be <= 65,536" in _one_line_error(capsys, ["import", str(path), "--out",
                                                                            str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_missing_gguf_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    import foresight.hf.gguf as mod

    path = write_gguf(tmp_path / "m.gguf", _hf_model("llama"))
    real = importlib.util.find_spec
    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    err = _one_line_error(capsys, ["import", str(path), "--out", str(tmp_path / "out")])
    assert "pip install 'foresight[gguf]'" in err
    with pytest.raises(ForesightError, match="gguf package"):
        inspect_gguf(path)


# ---- the real model (scripts/fetch_smollm2 puts it in the cache; CI fetches it first) ----


@pytest.fixture(scope="module")
def smollm2():
    from smollm2 import gguf_path

    path = gguf_path()
    if not path.is_file():
        if os.environ.get("FORESIGHT_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"SmolLM2 GGUF not found at {path}; run scripts/fetch_smollm2")
        pytest.skip(f"SmolLM2 GGUF not fetched ({path}); run scripts/fetch_smollm2")
    return path


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_gguf_import_is_exact(smollm2, tmp_path, capsys):
    from transformers import AutoTokenizer

    from foresight.data.tokenizer import load_tokenizer

    out = tmp_path / "smollm2"
    assert main(["import", str(smollm2), "--out", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "imported Llama (30 layers, d=576, vocab 49152, 134.52M parameters" in text, text
    assert float(re.search(r"max \|logits difference\| = (\S+)", text)[1]) <= TOL
    lm, _ = TrainableLM.from_checkpoint(out / "step_00000000.safetensors")
    cfg = lm.model.cfg
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.intermediate_size, cfg.rope_theta, cfg.tie_embeddings) == \
        (9, 3, 1536, 100000.0, True)
    theirs = AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    sample = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    assert load_tokenizer(out / "tokenizer").tokenizer.encode(sample).ids == theirs(sample)["input_ids"]
