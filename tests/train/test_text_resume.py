"""Training on text: a run killed mid-way and resumed logs exactly the per-step losses of the uninterrupted run.

The interrupted run is a real ``foresight train`` process, killed with SIGKILL (no clean-up code runs), then
continued with ``--resume`` from its newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from foresight.cli.main import main
from foresight.data.demo_corpus import demo_files
from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.shards import PreparedData
from foresight.data.sources import Documents
from foresight.data.tokenizer import train_tokenizer
from foresight.errors import ForesightError
from foresight.eval.perplexity import perplexity
from foresight.train.checkpoint import list_checkpoints
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics

STEPS, CKPT = 120, 10


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread here and in the child process: exactness holds for any fixed thread count, and a
    tiny model on a busy shared CI machine runs many times faster without waiting on a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text")
    files = demo_files(max_bytes=400_000)
    tok = train_tokenizer(Documents(files), 384)
    prepare(Documents(files, text_unit="paragraph"), tok, root / "data", PrepareConfig(val_fraction=0.1),
            progress=False)
    return root / "data"


def _recipe(tmp_path: Path, data_dir: Path, **text) -> Path:
    recipe = {
        "task": "text",
        "text": {"data": str(data_dir), "seq_len": 32, "val_batches": 2, **text},
        "model": {"hidden_size": 32, "n_layers": 2, "n_heads": 2, "intermediate_size": 64},
        "train": {"steps": STEPS, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5, "log_every": 1,
                  "eval_every": 40, "ckpt_every": CKPT, "keep_last": 2, "device": "cpu"},
        "runs": {"top": [{"name": "ntp"}, {"name": "top", "window": 64}]},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def _losses(run_dir: Path) -> tuple[dict, dict]:
    records = read_metrics(run_dir / "metrics.jsonl")
    train = {r["step"]: (r["loss"], r["ntp_loss"], r["top_loss"], r["grad_norm"])
             for r in records if r["kind"] == "train"}
    evals = {r["step"]: r for r in records if r["kind"] == "eval"}
    return train, evals


def test_killed_and_resumed_run_matches_the_uninterrupted_run(tmp_path, data_dir, capsys):
    recipe = _recipe(tmp_path, data_dir)
    assert main(["train", str(recipe), "--out", str(tmp_path / "full")]) == 0
    expected, expected_evals = _losses(tmp_path / "full" / "top")
    assert sorted(expected) == list(range(1, STEPS + 1))

    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "foresight", "train", str(recipe), "--out", str(cut)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not list_checkpoints(cut / "top" / "checkpoints") and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no handler runs: whatever is on disk is what a crash leaves
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = [s for s, _ in list_checkpoints(cut / "top" / "checkpoints")]
    assert saved and saved[-1] < STEPS

    assert main(["train", str(recipe), "--out", str(cut), "--resume"]) == 0
    got, got_evals = _losses(cut / "top")
    assert sorted(got) == list(range(1, STEPS + 1))  # lines logged after the checkpoint were replaced
    for step in range(1, STEPS + 1):
        assert got[step] == expected[step], f"step {step}: {got[step]} != {expected[step]}"
    assert got_evals == expected_evals and sorted(got_evals) == [40, 80, 120]


def test_validation_is_perplexity_of_the_same_windows(tmp_path, data_dir, capsys):
    recipe = _recipe(tmp_path, data_dir)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "train.steps=6",
                 "--set", "train.eval_every=3"]) == 0
    _, evals = _losses(tmp_path / "run" / "top")
    last = evals[6]
    assert set(last) >= {"val_loss", "val_ppl", "val_ntp_loss", "val_top_loss"}
    assert last["val_loss"] == last["val_ntp_loss"]
    assert last["val_ppl"] == pytest.approx(torch.tensor(last["val_loss"]).exp().item())
    lm, state = TrainableLM.from_checkpoint(tmp_path / "run" / "top")
    assert state["config"]["seq_len"] == 32 and (tmp_path / "run" / "top" / "tokenizer" / "tokenizer.json").is_file()
    ppl = perplexity(lm.model, data_dir, seq_len=32, batch_size=4, max_batches=2)
    assert ppl["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert ppl["tokens"] == 2 * 4 * 32
    out = capsys.readouterr().out
    assert "| top |" in out and (tmp_path / "run" / "compare.png").is_file()


def test_resume_on_other_data_is_refused(tmp_path, data_dir, capsys):
    recipe = _recipe(tmp_path, data_dir)
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), "--set", "train.steps=4", "--set", "train.ckpt_every=2"]) == 0
    capsys.readouterr()
    code = main(["train", str(recipe), "--out", str(out), "--resume", "--set", "train.steps=8",
                 "--set", "train.seed=5"])
    err = capsys.readouterr().err  # the recipe's settings are compared first (issue 21) ...
    assert code == 2 and "--resume: train.steps was 4 in the run, 8 now (and 1 more)" in err
    assert len(err.strip().splitlines()) == 1
    # ... the data itself by its fingerprint and position: the same recipe on other prepared data
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    (other / "meta.json").write_text((other / "meta.json").read_text() + "\n")  # other bytes: another fingerprint
    code = main(["train", str(recipe), "--out", str(out), "--resume", "--set", "train.steps=4", "--set",
                 "train.ckpt_every=2", "--set", f"text.data={other}"])
    err = capsys.readouterr().err
    assert code == 2 and "other data" in err and len(err.strip().splitlines()) == 1, err


def test_vocabulary_comes_from_the_tokenizer(tmp_path, data_dir, capsys):
    recipe = _recipe(tmp_path, data_dir)
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), "--set", "train.steps=1"]) == 0
    lm, _ = TrainableLM.from_checkpoint(out / "top")
    assert lm.model.cfg.vocab_size == 384  # 384 is a multiple of 64 already
    assert main(["train", str(recipe), "--out", str(out), "--overwrite", "--set", "train.steps=1", "--set",
                 "text.vocab_multiple=100"]) == 0
    assert TrainableLM.from_checkpoint(out / "top")[0].model.cfg.vocab_size == 400
    capsys.readouterr()
    code = main(["train", str(recipe), "--out", str(tmp_path / "other"), "--set", "model.vocab_size=300"])
    err = capsys.readouterr().err
    assert code == 2 and "smaller than the data's tokenizer vocabulary (384)" in err
    assert PreparedData.open(data_dir).vocab_size == 384
    with pytest.raises(ForesightError, match="no prepared data"):
        from foresight.tasks.text import TextTaskConfig, open_data

        open_data(TextTaskConfig(data=str(tmp_path / "nothing")))


def test_a_sequence_longer_than_the_data_fails_before_the_model_is_built(tmp_path, data_dir, capsys, monkeypatch):
    import foresight.tasks.run as run_loop

    monkeypatch.setattr(run_loop, "TrainableLM", None)  # building a model would fail loudly (TypeError)
    recipe = _recipe(tmp_path, data_dir)
    code = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "text.seq_len=10000000"])
    err = capsys.readouterr().err
    assert code == 2 and "text.seq_len=10,000,000: the training split" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_resume_with_a_changed_recipe_names_the_setting(tmp_path, data_dir, capsys):
    """Issue 21: text runs check every setting that changes the run, not only their data."""
    recipe = _recipe(tmp_path, data_dir)
    out = tmp_path / "run"
    tiny = ["--set", "train.steps=2", "--set", "train.ckpt_every=2"]
    assert main(["train", str(recipe), "--out", str(out), *tiny]) == 0
    capsys.readouterr()
    for override, line in [("runs.top=[{name: ntp}, {name: top, window: 32}]",
                            "--resume: runs.top[1].window was 64 in the run, 32 now"),
                           ("text.cross_documents=false", "--resume: text.cross_documents was true in the run, "
                                                          "false now"),
                           ("model.norm_eps=0.001", "--resume: model.norm_eps was 1e-06 in the run, 0.001 now")]:
        code = main(["train", str(recipe), "--out", str(out), "--resume", *tiny, "--set", override])
        err = capsys.readouterr().err
        assert code == 2 and line in err and len(err.strip().splitlines()) == 1, err
