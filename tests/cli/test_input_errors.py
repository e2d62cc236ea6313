"""Every malformed input file is one line naming the file and key, never a traceback, never a silent fallback
(issue 21): a heads file of the wrong shapes, wrong types / missing keys / NaN / non-JSON in ``config.json``,
weight index files, ``tokenizer_config.json``, prepared data's ``meta.json`` and ``metrics.jsonl`` (on resume and
in ``compare``). ``test_input_properties.py`` runs the same files through generated values."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from foresight.cli.main import main
from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.shards import PreparedData
from foresight.data.sources import Documents, expand_inputs
from foresight.data.tokenizer import train_tokenizer
from foresight.errors import ForesightError
from foresight.hf import export_lm
from foresight.hf.heads import HEADS_FILE, heads_metadata
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM
from foresight.train.metrics import MetricsWriter, read_metrics

SPECS = [{"name": "ntp"}, {"name": "top", "window": 8}]
TEXTS = ["alpha beta gamma delta " * 5, "one two three four five " * 5, "print('hello world')\n" * 5]


def _run(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(code: int, err: str, *fragments: str) -> str:
    """Exactly one ``foresight: error:`` line holding every fragment, exit 1 or 2, no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("foresight: error:")]
    assert code in (1, 2) and len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny exported model with a TOP head (config.json, model.safetensors, foresight_heads.safetensors)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=24, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32, max_seq_len=16)
    folder = tmp_path_factory.mktemp("hf") / "model"
    export_lm(TrainableLM(cfg, SPECS), SPECS, folder, with_heads=True)
    return folder


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_a_heads_file_of_the_wrong_shape_is_named_not_replaced(hf_dir, tmp_path, capsys):
    folder = _copy(hf_dir, tmp_path)
    heads = load_file(str(folder / HEADS_FILE))
    heads["top.head.weight"] = torch.zeros(16, 24)  # transposed: as many numbers, the wrong shape
    save_file(heads, str(folder / HEADS_FILE), metadata=heads_metadata(SPECS))
    one_line(*_run(["import", folder, "--out", tmp_path / "out"], capsys),
             "top.head.weight has shape (16, 24)", "needs (24, 16)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, fragment", [
    ("vocab_size", "x", "vocab_size must be an integer >= 1, got \"x\""),
    ("hidden_size", None, "missing 'hidden_size'"),
    ("num_attention_heads", 0, "num_attention_heads must be an integer >= 1, got 0"),
    ("num_hidden_layers", 2.5, "num_hidden_layers must be an integer >= 1, got 2.5"),
    ("intermediate_size", [32], "intermediate_size must be an integer >= 1"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps must be a finite number > 0, got NaN"),
    ("rms_norm_eps", "1e-6", "rms_norm_eps must be a finite number > 0"),
    ("tie_word_embeddings", "no", "tie_word_embeddings must be true or false"),
    ("max_position_embeddings", -1, "max_position_embeddings must be an integer >= 1"),
    ("model_type", ["llama"], "model_type must be a name"),
    ("architectures", 5, "architectures must be a list of class names"),
])
def test_malformed_config_json_values(hf_dir, tmp_path, capsys, key, value, fragment):
    folder = _copy(hf_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    if key == "num_attention_heads":
        config.pop("head_dim")
    (folder / "config.json").write_text(json.dumps(config))
    one_line(*_run(["import", folder, "--out", tmp_path / "out"], capsys), "config.json", fragment)


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"llama"'])
def test_a_config_json_that_is_not_an_object(hf_dir, tmp_path, capsys, text):
    folder = _copy(hf_dir, tmp_path)
    (folder / "config.json").write_text(text)
    one_line(*_run(["import", folder, "--out", tmp_path / "out"], capsys), "config.json", "JSON object")


@pytest.mark.parametrize("index, fragment", [
    (b"[]", "needs a 'weight_map' object"),
    (b'{"weight_map": ["model.safetensors"]}', "needs a 'weight_map' object"),
    (b'{"weight_map": {"lm_head.weight": 5}}', "weight_map holds 5, not a shard file name"),
    (b'{"weight_map": {"lm_head.weight": ["a"]}}', "not a shard file name"),
    (b"\xff\xfe{}", "not JSON"),
])
def test_malformed_weight_index(hf_dir, tmp_path, capsys, index, fragment):
    folder = _copy(hf_dir, tmp_path)
    (folder / "model.safetensors.index.json").write_bytes(index)
    one_line(*_run(["import", folder, "--out", tmp_path / "out"], capsys), "model.safetensors.index.json",
             fragment)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    tok = train_tokenizer(TEXTS, 300)
    files = []
    for i in range(8):
        files.append(root / f"{i}.txt")
        files[-1].write_text(TEXTS[i % 3] * 4)
    prepare(Documents(expand_inputs([str(f) for f in files])), tok, root / "data", PrepareConfig(val_fraction=0.25),
            progress=False)
    tok.save(root / "tok")
    return root


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.update(tokenizer=[1]), "tokenizer must be an object"),
    (lambda m: m["tokenizer"].update(vocab_size="300"), "tokenizer.vocab_size must be an integer >= 1, got \"300\""),
    (lambda m: m["tokenizer"].update(eos_id=300), "tokenizer.eos_id must be an integer in 0 .. vocab_size - 1"),
    (lambda m: m.update(splits=None), "splits must be an object"),
    (lambda m: m["splits"]["train"].update(tokens=-1), "splits.train.tokens must be an integer >= 0, got -1"),
    (lambda m: m["splits"]["val"].pop("documents"), "splits.val.documents must be an integer >= 0, got null"),
    (lambda m: m["splits"]["train"]["shards"].__setitem__(0, "train_00000.bin"), "splits.train.shards[0] must be"),
    (lambda m: m["splits"]["train"]["shards"][0].update(file=7), "splits.train.shards[0].file must be a file name"),
    (lambda m: m["splits"]["train"]["shards"][0].update(tokens=1.5), "shards[0].tokens must be an integer >= 0"),
    (lambda m: m.update(dtype=["uint16"]), "lacks a valid dtype"),
])
def test_malformed_meta_json(prepared, tmp_path, change, fragment):
    folder = _copy(prepared / "data", tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ForesightError) as err:
        PreparedData.open(folder)
    assert fragment in str(err.value) and "meta.json" in str(err.value) and "\n" not in str(err.value)


def test_malformed_meta_json_on_the_command_line(prepared, tmp_path, capsys):
    folder = _copy(prepared / "data", tmp_path)
    (folder / "meta.json").write_text("[]")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"task": "text", "text": {"data": str(folder)}, "runs": {"ntp": [{"name": "ntp"}]}}))
    one_line(*_run(["train", recipe, "--out", tmp_path / "run"], capsys), "meta.json is not foresight-tokens")


@pytest.mark.parametrize("raw, fragment", [(b"\xff{}", "is not valid JSON"), (b"[1]", "must hold a JSON object")])
def test_malformed_tokenizer_config(prepared, tmp_path, capsys, raw, fragment):
    folder = _copy(prepared / "tok", tmp_path)
    (folder / "tokenizer_config.json").write_bytes(raw)
    one_line(*_run(["tokenizer", "info", folder], capsys), "tokenizer_config.json", fragment)


@pytest.mark.parametrize("line, fragment", [
    ("[1, 2]", "line 3: not a JSON object"),
    ('{"kind": "train", "step": "7"}', "line 3: step must be an integer >= 0, got \"7\""),
    ('{"kind": "train", "step": 3, "loss": "low"}', "line 3: loss must be a number, got \"low\""),
    ('{"kind": "eval", "step": 3, "val_loss": null}', "line 3: val_loss must be a number, got null"),
    ('{"kind": "meta", "step": 0, "params": -5}', "line 3: params must be an integer >= 0"),
    ('{"kind": "meta", "step": 0, "objectives": "ntp"}', "line 3: objectives must be a list of names"),
])
def test_malformed_metrics_lines_in_compare_and_on_resume(tmp_path, capsys, line, fragment):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    good = [{"kind": "meta", "step": 0, "params": 10, "objectives": ["ntp"]},
            {"kind": "train", "step": 1, "loss": 2.0, "ntp_loss": 2.0}]
    text = "".join(json.dumps(r) + "\n" for r in good) + line + "\n"
    (run / "metrics.jsonl").write_text(text)
    one_line(*_run(["compare", tmp_path / "runs", "--out", tmp_path / "cmp"], capsys), "metrics.jsonl", fragment)
    with pytest.raises(ForesightError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        MetricsWriter(run / "metrics.jsonl", resume_step=1)
    assert (run / "metrics.jsonl").read_text() == text  # nothing rewritten


def test_a_line_cut_short_by_a_kill_is_still_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "train", "st')
    assert read_metrics(path) == [{"kind": "train", "step": 1, "loss": 2.0}]



def test_perplexity_on_data_from_a_larger_tokenizer(prepared, tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=24, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32, max_seq_len=16)
    from foresight.train.checkpoint import save_checkpoint

    lm = TrainableLM(cfg, [{"name": "ntp"}])
    save_checkpoint(tmp_path / "run", 1, {"lm": lm.state_dict(), "config": {"model": cfg.__dict__,
                                                                            "objectives": [{"name": "ntp"}]},
                                          "step": 1}, keep_last=1)
    one_line(*_run(["eval", tmp_path / "run", "--perplexity", prepared / "data", "--seq-len", "8"], capsys),
             "larger than the model's (24)")  # checked before the model is built


@pytest.mark.parametrize("pid", [10**30, -1, 0, True])
def test_a_lock_file_with_an_impossible_pid(tmp_path, capsys, pid):
    import socket

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".foresight.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                                  "token": "x"}))
    one_line(*_run(["stargraph", "run", "smoke", "--runs", "ntp", "--set", "train.steps=1", "--out",
                    tmp_path / "run"], capsys), "is in use by")
