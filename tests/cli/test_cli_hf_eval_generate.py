"""``foresight export / import / eval / generate`` as a user meets them: outputs, files, one-line errors."""

from __future__ import annotations

import json
import random

import pytest
import torch

from foresight.cli.main import main
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM
from foresight.train.state_file import save_state

WORDS = "the cat dog sat ran on under a mat log big small red blue is what where . ?".split()
SPECS = [{"name": "ntp"}, {"name": "mtp", "n": 3}, {"name": "top", "window": 8}]


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(code, err, fragment):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("foresight: error:") and fragment in lines[0], err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A text-like run folder: checkpoints/step_*.pt recording tokenizer: tokenizer, and tokenizer/."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    root = tmp_path_factory.mktemp("cli") / "run"
    vocab = {"</s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    (root / "tokenizer").mkdir(parents=True)
    tok.save(str(root / "tokenizer" / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), hidden_size=32, n_layers=2, n_heads=4, intermediate_size=48,
                      max_seq_len=32, init_std=0.3)
    lm = TrainableLM(cfg, SPECS)
    save_state({"lm": lm.state_dict(), "config": {"model": cfg.__dict__, "objectives": SPECS, "tokenizer": "tokenizer",
                                                   "seq_len": 16}, "step": 3},
                root / "checkpoints" / "step_00000003.safetensors")
    return root


def test_help_of_every_new_command(capsys):
    for cmd in ("export", "import", "eval", "generate"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0 and "usage:" in capsys.readouterr().out


def test_export_then_import_round_trip(run_dir, tmp_path, capsys):
    code, out, err = _run(["export", run_dir, "--out", tmp_path / "hf", "--with-heads", "--verify"], capsys)
    assert code == 0, err
    assert "exported LlamaForCausalLM" in out and "heads: mtp, top" in out
    diff = float(out.split("max |logits difference| = ")[1].split()[0])
    assert diff <= 1e-4
    assert (tmp_path / "hf" / "tokenizer.json").is_file()  # the run's tokenizer travelled

    code, out, err = _run(["import", tmp_path / "hf", "--out", tmp_path / "back", "--verify"], capsys)
    assert code == 0, err
    assert "objectives: ntp, mtp, top" in out and "mtp loaded" in out and "copied" in out
    assert float(out.split("max |logits difference| = ")[1].split()[0]) <= 1e-4
    back, state = TrainableLM.from_checkpoint(tmp_path / "back")
    original, _ = TrainableLM.from_checkpoint(run_dir)
    for k, v in original.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert state["config"]["tokenizer"] == "tokenizer"
    assert (tmp_path / "back" / "tokenizer" / "tokenizer.json").is_file()
    # An existing import is replaced only with --force, and then as a whole (issue 21).
    code, out, err = _run(["import", tmp_path / "hf", "--out", tmp_path / "back"], capsys)
    assert code == 2 and err.count("foresight: error:") == 1 and "--force" in err, err
    assert _run(["import", tmp_path / "hf", "--out", tmp_path / "back", "--force"], capsys)[0] == 0

    # New objectives for continued training: fresh heads on the imported trunk.
    code, out, err = _run(["import", tmp_path / "hf", "--out", tmp_path / "ct", "--objectives",
                           "[{name: ntp}, {name: dsmtp, depth: 1}]"], capsys)
    assert code == 0, err
    assert "dsmtp fresh" in out


def test_one_line_errors(run_dir, tmp_path, capsys):
    _error_line(*_run(["export", tmp_path / "missing", "--out", tmp_path / "x"], capsys)[::2], "checkpoint")
    (tmp_path / "gpt2").mkdir()
    gpt2_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(gpt2_config))
    _error_line(*_run(["import", tmp_path / "gpt2", "--out", tmp_path / "y"], capsys)[::2], "Qwen2")
    _error_line(*_run(["import", tmp_path / "gpt2", "--out", tmp_path / "y", "--objectives", "ntp,bogus"], capsys)[::2],
                "unknown objective 'bogus'")
    _error_line(*_run(["generate", run_dir, "--prompt-ids", "1 2", "--speculative", "--temperature", "0.7"],
                      capsys)[::2], "greedy")
    _error_line(*_run(["generate", run_dir, "--prompt-ids", "1 x"], capsys)[::2], "integers")
    _error_line(*_run(["generate", run_dir, "--prompt-ids", "1 2", "--top-p", "1.5", "--temperature", "1"],
                      capsys)[::2], "--top-p")
    _error_line(*_run(["eval", run_dir], capsys)[::2], "nothing to evaluate")
    _error_line(*_run(["eval", run_dir, "--tasks", "no_such_task_xyz", "--include-path", tmp_path], capsys)[::2],
                "unknown lm-eval task")
    # Issue 21: a typo is found before --backend hf exports (over) <run>/hf_export.
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    _error_line(*_run(["eval", run_dir, "--backend", "hf", "--tasks", "no_such_task_xyz", "--include-path",
                       tmp_path], capsys)[::2], "unknown lm-eval task")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_generate_text_sampling_and_speculative(run_dir, capsys):
    code, out, err = _run(["generate", run_dir, "--prompt", "the cat sat", "--max-new-tokens", "6", "--no-eos"], capsys)
    assert code == 0, err
    assert out.strip() and "[6 tokens in" in err
    code, out2, _ = _run(["generate", run_dir, "--prompt", "the cat sat", "--max-new-tokens", "6", "--no-eos",
                          "--temperature", "1.0", "--top-k", "5", "--seed", "3"], capsys)
    assert code == 0
    code, out, err = _run(["generate", run_dir, "--prompt-ids", "2 3 4", "--max-new-tokens", "12", "--speculative",
                           "mtp", "--compare"], capsys)
    assert code == 0, err
    assert len(out.split()) == 12 and "tau = " in err and "identical" in err
    code, _, err = _run(["generate", run_dir, "--prompt-ids", "2 3 4", "--max-new-tokens", "5", "--speculative", "top",
                         "--drafts", "2"], capsys)
    assert code == 0, err


def test_generate_limits_and_streaming(run_dir, capsys, monkeypatch):
    """The context (32 here) bounds prompt + output unless --allow-longer; bad numbers fail before the model is
    loaded; plain decoding streams: the output is printed token by token, equal to the returned sequence."""
    for args, fragment in [(["--max-new-tokens", "1000000000"], "--max-new-tokens must be in 1"),
                           (["--max-new-tokens", "30"], "exceeds the model's context of 32 tokens"),
                           (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
                           (["--temperature", "nan"], "--temperature"),
                           (["--top-k", "0", "--temperature", "1"], "--top-k must be >= 1"),
                           (["--top-p", "0", "--temperature", "1"], "--top-p must be in (0, 1]"),
                           (["--top-k", "3"], "--temperature is 0")]:
        _error_line(*_run(["generate", run_dir, "--prompt-ids", "2 3 4", *args], capsys)[::2], fragment)
    code, out, err = _run(["generate", run_dir, "--prompt-ids", "2 3 4", "--max-new-tokens", "40", "--no-eos",
                           "--allow-longer"], capsys)
    assert code == 0 and len(out.split()) == 40, err
    writes = []
    real = __import__("sys").stdout.write
    monkeypatch.setattr("sys.stdout.write", lambda text: writes.append(text) or real(text))
    code, out, err = _run(["generate", run_dir, "--prompt-ids", "2 3 4", "--max-new-tokens", "7", "--no-eos"], capsys)
    assert code == 0, err
    assert len([w for w in writes if w.strip()]) == 7 and out.split() == "".join(writes).split()


def test_eval_tasks_and_perplexity(run_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = [{"q": "the cat sat on", "choices": ["a mat", "the log"], "answer": 0},
            {"q": "the dog ran under", "choices": ["a log", "the mat"], "answer": 1}]
    (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "tiny_cli_mc.yaml").write_text(
        f"task: tiny_cli_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    # A prepared text folder for --perplexity (foresight prepare with the run's tokenizer).
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS[:-2]) for _ in range(12)) + " ." for _ in range(200)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    code, _, err = _run(["prepare", "--input", tmp_path / "corpus.txt", "--text-unit", "line", "--tokenizer",
                         run_dir / "tokenizer", "--out", tmp_path / "data", "--val-fraction", "0.5"], capsys)
    assert code == 0, err
    code, out, err = _run(["eval", run_dir, "--tasks", "tiny_cli_mc", "--include-path", tasks, "--offline",
                           "--perplexity", tmp_path / "data", "--ppl-batches", "2", "--out", tmp_path / "ev"], capsys)
    assert code == 0, err
    table = (tmp_path / "ev" / "results.md").read_text()
    assert "| tiny_cli_mc | acc |" in table and "Perplexity on" in table
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["perplexity"]["seq_len"] == 16 and result["perplexity"]["ppl"] > 1


def test_generate_speculative_reads_the_draft_vocabulary(run_dir, tmp_path, capsys):
    """A checkpoint whose config carries draft_vocab (benchmarks/smollm2_heads.py) drafts over those ids by
    default: other drafts (so other acceptance) than the full vocabulary, the same output; a bad list is one line."""
    lm, state = TrainableLM.from_checkpoint(run_dir)
    ids = [5, 2, 9, 11, 3]  # a few ids, deliberately not the model's favourites
    config = {**state["config"], "draft_vocab": ids}
    save_state({"lm": lm.state_dict(), "config": config, "step": 3}, tmp_path / "dv" / "step_00000003.safetensors")
    base = ["generate", tmp_path / "dv" / "step_00000003.safetensors", "--prompt-ids", "2 3 4", "--max-new-tokens",
            "12", "--speculative", "mtp", "--compare"]
    code, out_v, err_v = _run(base, capsys)
    assert code == 0, err_v
    assert "draft vocabulary of 5 ids" in err_v and "identical" in err_v
    code, out_f, err_f = _run([*base, "--draft-vocab", "none"], capsys)
    assert code == 0, err_f
    assert out_v == out_f and "draft vocabulary" not in err_f
    assert err_v.split("tau = ")[1].split()[0] != err_f.split("tau = ")[1].split()[0]  # other drafts
    code, _, err = _run(["generate", run_dir, "--prompt-ids", "2 3", "--max-new-tokens", "4", "--speculative"], capsys)
    assert code == 0 and "draft vocabulary" not in err  # no draft_vocab in the config: full vocabulary
    for bad in ([], [1, 1], [0, 99], "5"):
        save_state({"lm": lm.state_dict(), "config": {**config, "draft_vocab": bad}, "step": 3},
                   tmp_path / "bad" / "step_00000003.safetensors")
        _error_line(*_run(["generate", tmp_path / "bad" / "step_00000003.safetensors", "--prompt-ids", "2 3",
                           "--speculative"], capsys)[::2], "draft_vocab must be a non-empty list")


def test_generate_packed_and_auto_drafts(run_dir, capsys):
    """--packed (oneDNN pre-packed Linears) and --drafts auto (block size from measured costs): same output."""
    code, out, err = _run(["generate", run_dir, "--prompt-ids", "2 3 4", "--max-new-tokens", "12", "--speculative",
                           "ngram+mtp", "--drafts", "auto", "--packed", "--compare"], capsys)
    assert code == 0, err
    assert "identical" in err and "drafts verified per step (auto)" in err
    code, out, err = _run(["generate", run_dir, "--prompt-ids", "2 3 4", "--max-new-tokens", "5", "--packed", "bf16"],
                          capsys)
    assert code == 0 and len(out.split()) == 5, err
    _error_line(*_run(["generate", run_dir, "--prompt-ids", "2 3", "--drafts", "auto"], capsys)[::2],
                "--drafts auto needs --speculative")
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        main(["generate", str(run_dir), "--prompt-ids", "2 3", "--drafts", "many"])
    assert exc.value.code == 2 and "expected an integer or auto" in capsys.readouterr().err
