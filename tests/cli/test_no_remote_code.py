"""No code from any folder: a tokenizer or model folder whose config has an ``auto_map`` naming a Python file in
the folder never gets that file imported, even with ``y`` on stdin (transformers asks there when
``trust_remote_code`` is left unset; foresight always passes False).

Every entry point that hands a folder to transformers is run with ``y`` lines as its stdin, in-process (the
same ``input()`` that transformers' question reads) and, for the command line, once as a real subprocess. The
file writes a marker when imported; each case asserts the marker is absent and the entry point either works
(the code ignored) or ends in one ``foresight: error:`` line. The control test shows the folders do run code
when ``trust_remote_code`` is left unset, so the others can fail.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import foresight
from foresight.cli.main import main
from foresight.errors import ForesightError

SRC = Path(foresight.__file__).resolve().parents[1]  # the sources under test, for the subprocesses
WORDS = ["a", "b", "c", "ab", "<|endoftext|>"]

# The folder's code: writes the marker the moment it is imported, then defines the classes its auto_map names.
EVIL = """\
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


def code_tokenizer(folder: Path, marker: Path) -> Path:
    """A tokenizer folder without tokenizer.json (so transformers loads it) whose config asks for evil.py."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(WORDS)}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]},
        "tokenizer_class": "EvilTokenizer", "eos_token": "<|endoftext|>"}))
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return folder


def code_model(folder: Path, marker: Path, model_type: str = "evil", heads: bool = True) -> Path:
    """A tiny Llama saved by ``ForesightModel.save_pretrained``, its config.json asking for evil.py.
    ``model_type`` "evil" leaves transformers no class of its own; "llama" lets it ignore the auto_map."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg)
    if heads:
        foresight.wrap(model, [{"name": "ntp"}, {"name": "top", "window": 4}]).save_pretrained(folder)
    else:
        model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if model_type == "evil":
        config.update(model_type=model_type, architectures=["EvilModel"])
    config.update(auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return folder


def _run_checkpoint(folder: Path) -> Path:
    """A foresight checkpoint of the tokenizer's vocabulary (no tokenizer recorded)."""
    from foresight.model import ModelConfig
    from foresight.train.lm import TrainableLM
    from foresight.train.state_file import save_state

    cfg = ModelConfig(vocab_size=len(WORDS), hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16,
                      max_seq_len=16)
    lm = TrainableLM(cfg, [{"name": "ntp"}])
    path = folder / "checkpoints" / "step_00000001.safetensors"
    save_state({"lm": lm.state_dict(), "config": {"model": cfg.__dict__, "objectives": [{"name": "ntp"}]},
                "step": 1}, path)
    return path


@pytest.fixture
def yes(monkeypatch):
    """Every question asked on stdin is answered "y"."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 50))


def _one_line_or_ok(code: int, err: str, marker: Path) -> None:
    assert not marker.exists(), "the folder's code ran"
    lines = [line for line in err.splitlines() if line.startswith("foresight: error:")]
    assert "Traceback" not in err and (code == 0 or (code in (1, 2) and len(lines) == 1)), err


@pytest.mark.slow
def test_control_the_folders_run_code_when_trust_remote_code_is_unset(tmp_path):
    """transformers left to decide asks on stdin, and a piped ``y`` imports the folder's file."""
    marker = tmp_path / "ran"
    folder = code_tokenizer(tmp_path / "tok", marker)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": str(SRC)}
    script = f"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained({str(folder)!r})"
    subprocess.run([sys.executable, "-c", script], input="y\n", text=True, capture_output=True, env=env,
                   timeout=300)
    assert marker.exists()


@pytest.mark.slow
def test_the_command_line_with_y_piped_runs_no_code(tmp_path):
    """``foresight tokenizer info`` as a real process with ``y`` on its stdin: one line, nothing imported."""
    marker = tmp_path / "ran"
    folder = code_tokenizer(tmp_path / "tok", marker)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-m", "foresight", "tokenizer", "info", str(folder)], input="y\n" * 5,
                          text=True, capture_output=True, env=env, timeout=300)
    assert not marker.exists()
    assert done.returncode == 2 and done.stderr.count("foresight: error:") == 1, done.stderr
    assert "auto_map" in done.stderr and "Do you wish" not in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["tokenizer info", "prepare", "generate", "eval", "export"])
def test_commands_that_read_a_tokenizer_folder(command, tmp_path, capsys, yes):
    marker = tmp_path / "ran"
    tok = code_tokenizer(tmp_path / "tok", marker)
    (tmp_path / "docs.txt").write_text("a b ab\n\nb a\n")
    run = tmp_path / "run"
    _run_checkpoint(run)
    args = {"tokenizer info": ["tokenizer", "info", tok],
            "prepare": ["prepare", "--input", tmp_path / "docs.txt", "--tokenizer", tok, "--out", tmp_path / "data"],
            "generate": ["generate", run, "--tokenizer", tok, "--prompt", "a b", "--max-new-tokens", "2"],
            "eval": ["eval", run, "--tokenizer", tok, "--tasks", "arc_easy", "--limit", "1", "--offline"],
            "export": ["export", run, "--tokenizer", tok, "--out", tmp_path / "hf"]}[command]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    _one_line_or_ok(code, err, marker)
    if command == "export":  # copies the tokenizer files (never evil.py) and loads only the model it wrote
        assert code == 0 and not (tmp_path / "hf" / "evil.py").exists()
    else:
        assert code == 2 and "auto_map" in err and "never runs code" in err


def test_import_ignores_the_code_of_a_model_folder(tmp_path, capsys, yes):
    """``import`` reads config.json itself: an auto_map beside a Llama config is ignored, the import works."""
    marker = tmp_path / "ran"
    folder = code_model(tmp_path / "hf", marker, model_type="llama", heads=False)
    code_tokenizer(folder, marker)  # its tokenizer files are copied, never loaded through transformers
    code = main(["import", str(folder), "--out", str(tmp_path / "imported")])
    err = capsys.readouterr().err
    _one_line_or_ok(code, err, marker)
    assert code == 0 and (tmp_path / "imported" / "tokenizer" / "tokenizer_config.json").is_file()
    assert "config.json asks for code from the folder (auto_map); ignored" in err  # said, not silent


def test_foresight_model_from_pretrained(tmp_path, yes, capsys):
    marker = tmp_path / "ran"
    folder = code_model(tmp_path / "m", marker)
    with pytest.raises(ForesightError, match="auto_map"):
        foresight.ForesightModel.from_pretrained(folder)
    with pytest.raises(ForesightError, match="never runs code"):
        foresight.ForesightModel.from_pretrained(folder, trust_remote_code=True)
    assert not marker.exists()
    # A known model type: transformers' own class is used and the auto_map ignored.
    code_model(tmp_path / "m2", marker, model_type="llama")
    capsys.readouterr()
    wrapped = foresight.ForesightModel.from_pretrained(tmp_path / "m2")
    assert "top" in wrapped.objectives and not marker.exists()
    assert "auto_map); ignored" in capsys.readouterr().err


def test_wrapper_load_into_reads_no_code(tmp_path, yes):
    """What ``ForesightTrainer`` resumes with: safetensors only, the folder's code never imported."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from foresight.wrapper.io import load_into

    marker = tmp_path / "ran"
    folder = code_model(tmp_path / "m", marker, model_type="llama")
    torch.manual_seed(1)
    cfg = LlamaConfig.from_pretrained(folder)
    wrapped = foresight.wrap(LlamaForCausalLM(cfg), [{"name": "ntp"}, {"name": "top", "window": 4}])
    load_into(wrapped, folder)
    assert not marker.exists()


def test_lm_eval_model_class(tmp_path, yes):
    """lm-eval's ``--model foresight`` class, given the tokenizer folder."""
    pytest.importorskip("lm_eval")
    from foresight.eval.lm_eval_model import ForesightLM

    marker = tmp_path / "ran"
    tok = code_tokenizer(tmp_path / "tok", marker)
    path = _run_checkpoint(tmp_path / "run")
    with pytest.raises(ForesightError, match="auto_map"):
        ForesightLM(pretrained=str(path), tokenizer=str(tok))
    assert not marker.exists()


def test_lm_eval_hf_backend(tmp_path, yes):
    """``eval --backend hf`` on a Hugging Face folder: lm-eval's HFLM gets trust_remote_code=False."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from foresight.eval.lm_eval_runner import build_model

    marker = tmp_path / "ran"
    from tokenizers import Tokenizer, models

    folder = code_model(tmp_path / "m", marker, heads=False)
    code_tokenizer(folder, marker)
    Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a")).save(str(folder / "tokenizer.json"))
    with pytest.raises(ForesightError, match="auto_map"):
        build_model(folder, "hf")
    assert not marker.exists()


def test_prepare_from_a_dataset_folder_with_a_loading_script(tmp_path, capsys, yes, monkeypatch):
    """``prepare --dataset FOLDER``: a loading script in the folder is never run (datasets gets
    trust_remote_code=False; datasets 4 and later refuse scripts outright)."""
    from tokenizers import Tokenizer, models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "ds.py").write_text(EVIL.format(marker=str(marker)))
    tok = tmp_path / "tok"
    tok.mkdir()
    Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a")).save(str(tok / "tokenizer.json"))
    code = main(["prepare", "--dataset", str(folder), "--tokenizer", str(tok), "--out", str(tmp_path / "data")])
    _one_line_or_ok(code, capsys.readouterr().err, marker)
    assert code == 2 and not (tmp_path / "data").exists()


def test_a_tokenizer_transformers_knows_loads_with_the_code_ignored(tmp_path, capsys, yes):
    """``tokenizer_class`` names transformers' own class: it loads, the auto_map is ignored and said so."""
    marker = tmp_path / "ran"
    tok = code_tokenizer(tmp_path / "tok", marker)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2TokenizerFast"}))
    code = main(["tokenizer", "info", str(tok)])
    err = capsys.readouterr().err
    _one_line_or_ok(code, err, marker)
    assert code == 0 and "tokenizer_config.json asks for code from the folder (auto_map); ignored" in err
