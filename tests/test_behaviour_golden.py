"""Behaviour unchanged across refactors (issue 25 item 6): two short runs through the command line, a star-graph run
(NTP, TOP, MTP-3) and a text run (MTP-2 on a mixture-of-experts trunk), must write the same ``metrics.jsonl``
records as the committed golden files, timing fields aside.

The golden files were written by the code before issue 25's refactor (main at bbfc6b2) with
``FORESIGHT_WRITE_GOLDEN=1 python -m pytest tests/test_behaviour_golden.py``; rewrite them the same way only for a
change that is meant to change what a run computes, and say so in the commit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from foresight.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
TIMING = {"elapsed_s", "tokens_per_s", "tflops", "tokens_per_s_wall"}
CORPUS = [f"def f{i}(x):\n    return x * {i} + {i % 7}  # {w} and {w}s\n"
          for i, w in enumerate(["cats", "dogs", "trees", "rivers", "stars"] * 12)]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _records(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _close(a, b, where: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) or (math.isnan(a) and math.isnan(b)), \
            f"{where}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a.keys() ^ b.keys())}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _check(name: str, records: list[dict]) -> None:
    golden = GOLDEN / f"{name}.jsonl"
    if os.environ.get("FORESIGHT_WRITE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text("".join(json.dumps(r) + "\n" for r in records))
        return
    expected = [json.loads(line) for line in golden.read_text().splitlines()]
    assert len(records) == len(expected), f"{name}: {len(records)} records, golden {len(expected)}"
    for i, (got, want) in enumerate(zip(records, expected)):
        _close(got, want, f"{name}[{i}]")


@pytest.mark.slow
def test_star_graph_runs_write_the_golden_records(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["stargraph", "run", "smoke", "--runs", "ntp,top,mtp3", "--set", "train.steps=12", "--set",
                 "train.log_every=1", "--set", "train.eval_every=6", "--set", "stargraph.jobs=1", "--out", "sg"])
    assert code == 0, capsys.readouterr().err
    for run in ("ntp", "top", "mtp3"):
        _check(f"stargraph-{run}", _records(tmp_path / "sg" / run / "metrics.jsonl"))


@pytest.mark.slow
def test_a_text_run_with_mtp_and_moe_writes_the_golden_records(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("\n\n".join(CORPUS))
    assert main(["tokenizer", "train", "--input", "corpus.txt", "--text-unit", "paragraph", "--vocab-size", "300",
                 "--out", "tok"]) == 0
    assert main(["prepare", "--input", "corpus.txt", "--text-unit", "paragraph", "--tokenizer", "tok", "--out",
                 "data", "--val-fraction", "0.2"]) == 0
    recipe = {"task": "text", "text": {"data": "data", "seq_len": 16, "val_batches": 1},
              "model": {"hidden_size": 16, "n_layers": 2, "n_heads": 2, "intermediate_size": 32, "ffn": "moe",
                        "moe_experts": 4, "moe_top_k": 2},
              "train": {"steps": 8, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-2, "min_lr": 1e-3,
                        "warmup_steps": 2, "log_every": 1, "eval_every": 4, "device": "cpu"},
              "runs": {"mtp2": [{"name": "ntp"}, {"name": "mtp", "n": 2}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    code = main(["train", "r.yaml", "--out", "txt"])
    assert code == 0, capsys.readouterr().err
    _check("text-moe-mtp2", _records(tmp_path / "txt" / "mtp2" / "metrics.jsonl"))
