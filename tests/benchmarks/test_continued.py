"""benchmarks/continued.py on a tiny pretrained model: the shipped recipe with --set overrides trains every run
through ``foresight train``'s code, writes one row per (run, seed) with the issue's fields, skips finished rows
on a rerun, and writes the table and the plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foresight.data.demo_corpus import demo_files
from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.sources import Documents
from foresight.data.tokenizer import train_tokenizer
from foresight.hf import export_lm
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM

ROOT = Path(__file__).resolve().parents[2]


def _run(root: Path, *extra: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    sets = [f"text.data={root / 'data'}", f"text.init_from={root / 'hf'}", "text.seq_len=16", "text.val_batches=1",
            "text.val_batch_size=2", "train.steps=2", "train.warmup_steps=1", "train.unfreeze_blocks=1",
            "train.device=cpu"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "continued.py"), "--recipe",
           str(ROOT / "configs" / "text" / "continued_smollm2.yaml"), *[a for s in sets for a in ("--set", s)],
           "--out", str(root / "runs"), "--results", str(root / "res"), "--examples", "3", "--context", "8",
           "--max-new-tokens", "6", "--threads", "1", *extra]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_continued_rows_table_and_rerun(tmp_path):
    files = demo_files(max_bytes=120_000)
    tok = train_tokenizer(Documents(files), 320)
    prepare(Documents(files), tok, tmp_path / "data", PrepareConfig(val_fraction=0.2), progress=False)
    torch.manual_seed(0)
    source = TrainableLM(ModelConfig(vocab_size=384, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2,
                                     intermediate_size=64, tie_embeddings=True), [{"name": "ntp"}])
    export_lm(source, [{"name": "ntp"}], tmp_path / "hf")

    _run(tmp_path, "--runs", "ntp,top", "--seeds", "0,1", "--base")
    res = tmp_path / "res"
    assert sorted(p.name for p in res.glob("*.json")) == ["base.json", "ntp-seed0.json", "ntp-seed1.json",
                                                          "top-seed0.json", "top-seed1.json"]
    rows = {p.stem: json.loads(p.read_text()) for p in res.glob("*.json")}
    for name, row in rows.items():
        assert {"model", "objective", "seed", "val_loss", "next_line_exact_match", "next_line_edit_similarity",
                "tokens", "steps", "wall_clock_s", "device", "torch", "date", "command"} <= set(row), name
        assert 0 <= row["next_line_exact_match"] <= 1 and row["next_line_examples"] == 3
    assert rows["top-seed1"]["objective"] == "top" and rows["top-seed1"]["seed"] == 1
    assert rows["ntp-seed0"]["tokens"] == 2 * 4 * 16 and rows["ntp-seed0"]["steps"] == 2
    assert rows["ntp-seed0"]["trainable"] == {"freeze": "trunk", "unfreeze_blocks": 1}
    assert rows["ntp-seed0"]["val_loss"] != rows["ntp-seed1"]["val_loss"]  # the seed orders the data
    assert rows["base"]["val_loss"] != rows["ntp-seed0"]["val_loss"]
    assert not (tmp_path / "runs" / "ntp-seed0" / "ntp" / "checkpoints").exists()  # weights dropped
    table = (res / "table.md").read_text()
    assert "| ntp | 0, 1 |" in table and "±" in table and "| base | — |" in table
    assert (res / "continued.png").stat().st_size > 0

    again = _run(tmp_path, "--runs", "ntp", "--seeds", "0")
    assert "exists: skipped" in again
