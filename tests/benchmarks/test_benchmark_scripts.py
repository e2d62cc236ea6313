"""The benchmark scripts run and write valid JSON (their --tiny CPU modes; timings are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_train_step_tiny_writes_json(tmp_path):
    path = tmp_path / "train_step.json"
    run_script("train_step.py", "--tiny", "--models", "340m", "--runs", "ntp,top,mtp4", "--steps", "1", "--out", str(path))
    data = json.loads(path.read_text())
    assert {"device", "torch", "triton", "date", "batch", "seq_len"} <= set(data["meta"])
    assert [(r["model"], r["run"]) for r in data["results"]] == [("340m", "ntp"), ("340m", "top"), ("340m", "mtp4")]
    for r in data["results"]:
        assert r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 and r["loss"] > 0
    assert data["results"][0]["x_ntp_time"] == 1.0
    assert data["results"][2]["n_layers"] == data["results"][0]["n_layers"] - 3  # MTP-4: L - 3 trunk blocks


@pytest.mark.slow
def test_loss_layer_tiny_writes_json(tmp_path):
    path = tmp_path / "loss_layer.json"
    run_script("loss_layer.py", "--tiny", "--methods", "top,top_loss,targets_torch,targets_dense,floor,liger_ce",
               "--warmup", "1", "--repeats", "1", "--out", str(path))
    data = json.loads(path.read_text())
    rows = {r["method"]: r for r in data["results"]}
    assert set(rows) == {"top", "top_loss", "targets_torch", "targets_dense", "floor"} | (
        set() if "liger_ce" in data["meta"]["skipped"] else {"liger_ce"})
    assert rows["top"]["loss"] == pytest.approx(rows["top_loss"]["loss"], rel=1e-5)
    assert rows["targets_torch"]["loss"] == rows["targets_dense"]["loss"]  # positions with a target, both builders
