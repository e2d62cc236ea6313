"""``foresight eval`` on a ``save_pretrained`` folder (issue 22): scored with lm-eval's ``hf`` model as it is,
``--tokenizer`` honoured, and one line saying what to run where it cannot (``--perplexity``, ``generate``)."""

from __future__ import annotations

import json

import pytest
import torch

from foresight.cli.main import main
from foresight.wrapper import wrap

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf model
pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = "the cat dog sat ran on under a mat log big small red blue is what where . ?".split()
DOCS = [{"q": "the cat sat on", "choices": ["a mat", "the log"], "answer": 0},
        {"q": "the dog ran under", "choices": ["a log", "the mat"], "answer": 1},
        {"q": "what is red ?", "choices": ["the cat", "a small mat"], "answer": 1}]


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("foresight: error:")]
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A wrapped tiny Llama saved with save_pretrained (no tokenizer files), a word-level tokenizer folder and a
    local multiple-choice task."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    root = tmp_path_factory.mktemp("evalhf")
    vocab = {"</s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}  # 24 ids; the model has 29
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    (root / "tok").mkdir()
    tok.save(str(root / "tok" / "tokenizer.json"))
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                                         max_position_embeddings=64, bos_token_id=0, eos_token_id=0))
    wrap(model.eval(), [{"name": "ntp"}, {"name": "top", "window": 4}]).save_pretrained(root / "saved")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tasks / "tiny_hf_mc.yaml").write_text(
        f"task: tiny_hf_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    return root


def _eval(capsys, folders, folder, out, *extra):
    return _run(["eval", folder, "--tasks", "tiny_hf_mc", "--include-path", folders / "tasks", "--offline",
                 "--out", out, "--output-path", out / "lm_eval", "--log-samples", *extra], capsys)


def _loglikelihoods(out):
    (samples,) = out.glob("lm_eval/**/samples_tiny_hf_mc_*.jsonl")
    return [float(r[0][0]) for line in samples.read_text().splitlines() for r in json.loads(line)["resps"]]


def test_eval_scores_a_save_pretrained_folder_with_the_given_tokenizer(folders, tmp_path, capsys):
    saved = folders / "saved"
    code, _, err = _eval(capsys, folders, saved, tmp_path / "no_tok")
    _error_line(code, err, "no tokenizer files", "--tokenizer")  # was "no checkpoint ... in" with no hint
    assert "evaluating it with --backend hf" in err

    code, out, err = _eval(capsys, folders, saved, tmp_path / "ev", "--tokenizer", folders / "tok")
    assert code == 0, err
    assert "evaluating it with --backend hf" in err and "| tiny_hf_mc | acc |" in out
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["meta"]["backend"] == "hf" and result["rows"][0]["n"] == len(DOCS)
    assert not (saved / "tokenizer.json").exists()  # the user's folder is not written to

    # the same numbers as the folder with those tokenizer files in it (the route that worked before)
    import shutil

    from foresight.hf.tokenizer import copy_tokenizer

    shutil.copytree(saved, tmp_path / "with_tok")
    copy_tokenizer(folders / "tok", tmp_path / "with_tok")
    code, _, err = _eval(capsys, folders, tmp_path / "with_tok", tmp_path / "ev2", "--backend", "hf")
    assert code == 0, err
    assert _loglikelihoods(tmp_path / "ev") == pytest.approx(_loglikelihoods(tmp_path / "ev2"), abs=1e-6)


def test_what_cannot_read_a_save_pretrained_folder_says_what_to_run(folders, tmp_path, capsys):
    saved = folders / "saved"
    code, _, err = _run(["eval", saved, "--perplexity", tmp_path, "--out", tmp_path / "ev"], capsys)
    _error_line(code, err, "Hugging Face model folder", f"foresight import {saved} --out RUN")
    code, _, err = _run(["generate", saved, "--prompt", "the cat"], capsys)
    _error_line(code, err, "no checkpoint", "Hugging Face model folder", f"foresight import {saved}")
    code, _, err = _eval(capsys, folders, saved, tmp_path / "bad", "--tokenizer", tmp_path)
    _error_line(code, err, "no tokenizer files", str(tmp_path))
