"""lm-evaluation-harness on a tiny local task: offline, no downloads, numbers checked against a direct computation.

The test writes its own tokenizer (a word-level one built by hand), a random foresight checkpoint, three task
YAMLs reading local JSON-lines files (multiple choice, rolling log-likelihood, generation), then runs
``simple_evaluate`` through the ``foresight`` backend and, when ``accelerate`` is installed, through the
exported Hugging Face folder with lm-eval's own ``hf`` model.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from foresight.errors import ForesightError
from foresight.eval.lm_eval_runner import (
    PAPER_TASKS,
    build_model,
    resolve_tasks,
    result_rows,
    run_lm_eval,
    write_results,
)
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM
from foresight.train.state_file import save_state

pytest.importorskip("lm_eval")
WORDS = "the cat dog sat ran on under a mat log big small red blue is what where . ?".split()
MC = [
    {"question": "the cat sat on", "choices": ["a mat", "the log", "a big red mat"], "answer": 0},
    {"question": "the dog ran under", "choices": ["a log", "the mat"], "answer": 1},
    {"question": "what is red ?", "choices": ["the cat", "a dog", "the small mat", "blue"], "answer": 2},
    {"question": "where is the cat ?", "choices": ["on the mat", "under a log"], "answer": 0},
]
ROLL = [{"text": "the cat sat on the mat ."}, {"text": "a big dog ran under the red log ."}]
GEN = [{"question": "the cat sat", "answer": "on"}, {"question": "where is the dog ?", "answer": "under"}]


def _tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"</s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return len(vocab)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _tasks(folder):
    folder.mkdir()
    _jsonl(folder / "mc.jsonl", MC)
    _jsonl(folder / "roll.jsonl", ROLL)
    _jsonl(folder / "gen.jsonl", GEN)
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "tiny_roll.yaml").write_text(
        f"task: tiny_roll\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'roll.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 3\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    vocab = _tokenizer(root / "run" / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab + 3, hidden_size=32, n_layers=2, n_heads=4, intermediate_size=48,
                      max_seq_len=16, init_std=0.5)  # vocab padded past the tokenizer's, as text runs do
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "top", "window": 8}]).eval()
    config = {"model": cfg.__dict__, "objectives": [{"name": "ntp"}, {"name": "top", "window": 8}],
              "tokenizer": "tokenizer"}
    save_state({"lm": lm.state_dict(), "config": config, "step": 7},
               root / "run" / "checkpoints" / "step_00000007.safetensors")
    _tasks(root / "tasks")
    return root, lm


def _direct_mc(lm, tok) -> tuple[list[list[float]], float]:
    """Per-choice log-likelihoods and accuracy, computed here with lm-eval's tokenisation convention
    (continuation = ' ' + choice, split off the encoding of the whole string)."""
    lls, correct = [], 0
    with torch.no_grad():
        for doc in MC:
            ctx = tok.encode(doc["question"])
            row = []
            for choice in doc["choices"]:
                whole = tok.encode(doc["question"] + " " + choice)
                logp = torch.log_softmax(lm.model(torch.tensor([whole[:-1]]))[0], -1)
                row.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
            lls.append(row)
            correct += int(max(range(len(row)), key=row.__getitem__) == doc["answer"])
    return lls, correct / len(MC)


def test_foresight_backend_matches_direct_computation(setup, tmp_path):
    root, lm = setup
    model = build_model(root / "run", "foresight")
    results = run_lm_eval(model, ["tiny_mc", "tiny_roll", "tiny_gen"], include_path=root / "tasks", offline=True,
                          log_samples=True)
    lls, acc = _direct_mc(lm, model.tok)
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(acc)
    for sample in results["samples"]["tiny_mc"]:
        got = [r[0] for r in sample["filtered_resps"]]
        assert got == pytest.approx(lls[sample["doc_id"]], abs=1e-4)

    # Rolling: every token once, the first conditioned on the end-of-document token.
    total_ll, total_bytes = 0.0, 0
    with torch.no_grad():
        for doc in ROLL:
            ids = [0] + model.tok.encode(doc["text"])
            logp = torch.log_softmax(lm.model(torch.tensor([ids[:-1]]))[0], -1)
            total_ll += sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
            total_bytes += len(doc["text"].encode())
    bits_per_byte = -total_ll / total_bytes / math.log(2)
    assert results["results"]["tiny_roll"]["bits_per_byte,none"] == pytest.approx(bits_per_byte, rel=1e-4)

    # Generation: greedy, stopped at '.', compared with the answer.
    from foresight.generate import generate

    hits, texts = 0, []
    for doc in GEN:
        ids = torch.tensor([model.tok.encode(doc["question"])])
        new = generate(lm.model, ids, 3, eos_id=0)[0, ids.shape[1]:].tolist()
        new = new[: new.index(0)] if 0 in new else new
        texts.append(model.tok.decode(new).split(".")[0])
        hits += int(texts[-1].strip() == doc["answer"])
    got = {s["doc_id"]: s["resps"][0][0] for s in results["samples"]["tiny_gen"]}
    assert [got[i] for i in range(len(GEN))] == texts
    assert results["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(hits / len(GEN))

    rows = result_rows(results)
    md, js = write_results(rows, tmp_path / "out", {"checkpoint": "run", "backend": "foresight"})
    table = md.read_text()
    assert "| tiny_mc | acc |" in table and "| tiny_roll | bits_per_byte |" in table
    assert json.loads(js.read_text())["rows"]


def test_hf_backend_on_the_exported_folder_agrees(setup):
    pytest.importorskip("accelerate")
    root, _ = setup
    ours = run_lm_eval(build_model(root / "run", "foresight"), ["tiny_mc", "tiny_roll"], include_path=root / "tasks",
                       offline=True, log_samples=True)
    hf = run_lm_eval(build_model(root / "run", "hf", hf_dir=root / "hf"), ["tiny_mc", "tiny_roll"],
                     include_path=root / "tasks", offline=True, log_samples=True)
    assert (root / "hf" / "config.json").is_file() and (root / "hf" / "tokenizer.json").is_file()
    for a, b in zip(ours["samples"]["tiny_mc"], hf["samples"]["tiny_mc"]):
        assert [r[0] for r in a["filtered_resps"]] == pytest.approx([r[0] for r in b["filtered_resps"]], abs=1e-4)
    assert ours["results"]["tiny_roll"]["bits_per_byte,none"] == pytest.approx(
        hf["results"]["tiny_roll"]["bits_per_byte,none"], rel=1e-5)


def test_task_resolution_and_errors(setup):
    root, _ = setup
    assert resolve_tasks("paper") == list(PAPER_TASKS)
    assert resolve_tasks("piqa,paper")[:2] == ["piqa", "arc_easy"] and len(resolve_tasks("piqa,paper")) == 11
    with pytest.raises(ForesightError, match="empty"):
        resolve_tasks(" , ")
    with pytest.raises(ForesightError, match="--backend"):
        build_model(root / "run", "vllm")
    with pytest.raises(ForesightError, match="does not exist"):
        run_lm_eval(None, ["tiny_mc"], include_path=root / "nope")
