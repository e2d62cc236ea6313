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
    run_script("train_step.py", "--tiny", "--models", "340m", "--runs", "ntp,top,mtp4", "--steps", "1",
               "--out", str(path))
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


@pytest.mark.slow
def test_cpu_step_runs_old_and_new(tmp_path):
    # Needs the baseline commit in the clone's history (CI clones it whole); timings are not checked.
    run_script("cpu_step.py", "--steps", "1", "--warmup", "2", "--rounds", "1", "--quick")


def test_stargraph_sweep_cells_and_table(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import stargraph_sweep as sweep
    finally:
        sys.path.pop(0)
    assert sweep.cell_steps("base", 1000) == 1000 and sweep.cell_steps("b128", 1000) == 2000  # same examples
    cmd = sweep.cell_command("top-w2", "top", 3, 1000, tmp_path)
    assert cmd[cmd.index("--seeds") + 1] == "3" and "train.steps=1000" in cmd
    assert "runs.top=[{name: ntp}, {name: top, weight: 2.0, window: 4096}]" in cmd
    assert len(sweep.CONFIGS) >= 30
    row = {"config": "base", "about": "x", "run": "top", "seed": 0, "params": 160000, "batch_size": 256, "steps": 10,
           "final_exact_match": 0.5, "valid_arm": 1.0, "v1_acc": 0.5, "steps_to_90": None, "steps_to_95": None,
           "wall_clock_s": 3.0, "device_name": "cpu", "torch": "2", "commit": "abc", "date": "today"}
    (tmp_path / "base-top-seed0.json").write_text(json.dumps(row))
    table = sweep.write_table(tmp_path).read_text()
    assert "| base | x | top | 0 | 0.16M | 256 | 10 | 50.0% | 100.0% | 50.0% | — | — | 3 |" in table
    cmd = sweep.cell_command("top-late-w2", "top", 2, 2500, tmp_path, "cpu_solve", 250, tmp_path / "res")
    assert cmd[cmd.index("run") + 1] == "cpu_solve" and "train.eval_every=250" in cmd
    assert cmd[-2:] == ["--results", str(tmp_path / "res")]


def test_stargraph_probe_children_match_the_edge_list():
    # The probe's distractor arm (the source's other child, its child, its leaf) against a plain loop over edges.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import stargraph_probe as probe
    finally:
        sys.path.pop(0)
    from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate

    spec = StarGraphSpec(2, 4, 10)
    examples = generate(spec, 7, seed=3)
    data = StarGraphData(examples, spec)
    got = probe.children_of(data.prefixes, data.paths[:, 0], spec)  # (7, 2): the source's children
    for ex, row in zip(examples, got.tolist()):
        assert sorted(row) == sorted(b for a, b in ex.edges if a == ex.source)
        assert ex.path[1] in row
    leaves = probe.children_of(data.prefixes, data.paths[:, 3], spec)  # a goal has no child
    assert (leaves == -1).all()


def test_memory_report_refuses_a_folder_without_runs(tmp_path):
    """A wrong folder is one line and nothing under --out is written (it may hold committed results)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_report.py"), str(tmp_path / "nope"),
                          "--out", str(tmp_path / "report")], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "no dense/moe/ultramem/result.json" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "report").exists()
