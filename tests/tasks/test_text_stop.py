"""SIGTERM stops ``foresight train`` on a text recipe gracefully, as it does a star-graph run (the scheduler both
tasks share, ``foresight.tasks.pool``): the running run ends with a final evaluation and checkpoint, its
result.json says ``"partial": true``, the next run is not started, the comparison is written, exit 0. (Before
issue 25 the text task had no handler: SIGTERM killed it with no result.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foresight.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TEXT = "\n\n".join(f"Paragraph {i} talks about {w}; def f{i}(x): return x * {i}"
                   for i, w in enumerate(["cats", "dogs", "trees", "rivers", "stars", "code"] * 12))


@pytest.mark.slow  # two processes importing torch, a tokenizer and data prepared first: ~20 s of CPU
def test_sigterm_ends_a_text_run_with_a_partial_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(TEXT)
    assert main(["tokenizer", "train", "--input", "corpus", "--text-unit", "paragraph", "--vocab-size", "300",
                 "--out", "tok"]) == 0
    assert main(["prepare", "--input", "corpus", "--text-unit", "paragraph", "--tokenizer", "tok", "--out", "data",
                 "--val-fraction", "0.25"]) == 0
    capsys.readouterr()
    recipe = {"task": "text", "text": {"data": "data", "seq_len": 16, "val_batches": 1},
              "model": {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "intermediate_size": 32},
              "train": {"steps": 100000, "batch_size": 2, "log_every": 1, "eval_every": 0, "tensorboard": False,
                        "device": "cpu"},
              "runs": {"ntp": [{"name": "ntp"}], "top": [{"name": "ntp"}, {"name": "top", "window": 16}]}}
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "foresight", "train", "r.yaml", "--out", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "ntp" / "metrics.jsonl"
    try:
        t0 = time.time()
        while not (metrics.is_file() and '"kind": "train"' in metrics.read_text()):
            assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    result = json.loads((tmp_path / "run" / "ntp" / "result.json").read_text())
    assert result["partial"] is True and 0 < result["steps"] < 100000
    assert (tmp_path / "run" / "ntp" / "checkpoints" / f"step_{result['steps']:08d}.safetensors").is_file()
    assert not (tmp_path / "run" / "top").exists() and "not run (stopped): top" in stdout
    assert (tmp_path / "run" / "compare.md").is_file()
