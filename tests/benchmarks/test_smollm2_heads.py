"""benchmarks/smollm2_heads.py on a tiny model: distil, train DS-MTP heads on distilled rows plus real-text rows
(--text-rows, trunk states cached once and reused), and the checkpoint drafts through ``foresight generate``
over its draft vocabulary with the plain greedy output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from foresight.cli.main import main
from foresight.data.demo_corpus import demo_files
from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.sources import Documents
from foresight.data.tokenizer import train_tokenizer
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM
from foresight.train.state_file import save_state

ROOT = Path(__file__).resolve().parents[2]


def _script(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "smollm2_heads.py"), *map(str, args)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_distil_train_with_text_rows_and_generate(tmp_path, capsys):
    files = demo_files(max_bytes=60_000)
    tok = train_tokenizer(Documents(files), 300)
    prepare(Documents(files), tok, tmp_path / "data", PrepareConfig(val_fraction=0.2), progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=320, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48,
                      max_seq_len=64)
    lm = TrainableLM(cfg, [{"name": "ntp"}])
    save_state({"lm": lm.state_dict(), "config": {"model": asdict(cfg), "objectives": [{"name": "ntp"}]},
                "step": 0}, tmp_path / "model" / "step_00000000.safetensors")
    shutil.copytree(tmp_path / "data" / "tokenizer", tmp_path / "model" / "tokenizer")  # as foresight import writes

    _script("distill", "--model", tmp_path / "model", "--data", tmp_path / "data", "--out", tmp_path / "d.st",
            "--prompts", 6, "--prompt-len", 4, "--new-tokens", 8, "--batch", 3, "--threads", 1)
    train = ["train", "--model", tmp_path / "model", "--tokens", tmp_path / "d.st", "--drafter", "dsmtp", "--k", 2,
             "--steps", 3, "--batch", 4, "--held-out", 2, "--draft-vocab", 64, "--vocab-from", tmp_path / "data",
             "--text-rows", 5, "--text-cache", tmp_path / "text.st", "--threads", 1, "--out", tmp_path / "heads"]
    first = _script(*train)
    assert "text cache: 5 x 12 tokens" in first.stderr
    info = json.loads((tmp_path / "heads" / "heads.json").read_text())
    assert info["text_rows"] == 5 and info["text_positions"] == 5 * 11 and info["train_sequences"] == 4
    assert len(info["held_out_accuracy"]) == 2
    again = _script(*train)  # the cached text states are reused
    assert "text cache" not in again.stderr

    ckpt = tmp_path / "heads" / "step_00000000.safetensors"
    code = main(["generate", str(ckpt), "--prompt-ids", "5 6 7", "--max-new-tokens", "10", "--speculative",
                 "--compare"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "draft vocabulary of 64 ids" in err and "identical" in err
