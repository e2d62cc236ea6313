"""The command line as a user meets it: help, the smoke recipe end to end, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from foresight.cli.main import main

SMOKE = ["stargraph", "run", "smoke", "--set", "train.steps=6", "--set", "train.eval_every=3"]


def _run(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "stargraph" in out and "train" in out


@pytest.mark.parametrize("cmd", [["stargraph", "--help"], ["stargraph", "run", "--help"],
                                 ["stargraph", "generate", "--help"], ["train", "--help"]])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main(cmd)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_smoke_recipe_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = _run(SMOKE + ["--out", str(out_dir)], capsys)
    assert code == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    assert [r["run"] for r in results] == ["ntp", "top", "mtp3", "dsmtp3"]
    for r in results:
        assert r["steps"] == 6 and [s for s, _ in r["curve"]] == [3, 6]
        assert set(r["final"]) >= {"exact_match", "v1_acc", "valid_arm"}
        assert (out_dir / r["run"] / "metrics.jsonl").is_file()
        assert (out_dir / r["run"] / "checkpoints" / "step_00000006.safetensors").is_file()
    assert (out_dir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out_dir / "results.md").read_text()
    assert "| top |" in table and "exact match" in table
    assert "| ntp |" in out  # the table is printed too

    # Resuming a finished run trains nothing more and rewrites the same results.
    code, _, err = _run(SMOKE + ["--out", str(out_dir), "--resume", "--runs", "ntp"], capsys)
    assert code == 0, err
    assert json.loads((out_dir / "results.json").read_text())[0]["steps"] == 6


def test_generate_writes_the_original_format(tmp_path, capsys):
    out = tmp_path / "g.txt"
    code, _, err = _run(["stargraph", "generate", "--deg", "3", "--path", "4", "--nodes", "20", "--count", "5",
                         "--seed", "7", "--out", str(out)], capsys)
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    for line in lines:
        edges, rest = line.split("/")
        query, path = rest.split("=")
        assert len(edges.split("|")) == 9 and len(path.split(",")) == 4
        assert path.split(",")[0] == query.split(",")[0]  # the path starts at the source


@pytest.mark.parametrize("args, needle", [
    (["stargraph", "run", "smoke", "--set", "stargraph.nodes=3"], "too small"),
    (["stargraph", "run", "smoke", "--set", "train.stepz=3"], "unknown key train.stepz"),
    (["stargraph", "run", "smoke", "--set", "train.steps=many"], "train.steps must be int"),
    (["stargraph", "run", "smoke", "--set", "train.lr=-1"], "train.lr must be in (0, 1]"),
    (["stargraph", "run", "smoke", "--set", "model.n_heads=3"], "divisible"),
    (["stargraph", "run", "smoke", "--set", "runs.top=[{name: topp}]"], "unknown objective 'topp'"),
    (["stargraph", "run", "smoke", "--set", "runs.top=[{name: top, windw: 3}]"], "unknown key runs.top.top.windw"),
    (["stargraph", "run", "smoke", "--set", "runs.top=[{name: ntp}, {name: top, weight: [[0, 0.0], [300, 2.0]]}]"],
     "runs.top.top.weight: a schedule time must say its unit; write [[{step: 0}, 0.0], [{step: 300}, 2.0]]"),
    (["stargraph", "run", "smoke", "--set", "runs.top=[{name: top, weight: [[{frac: 0}, 1.0], [{step: 9}, 2.0]]}]"],
     "not both"),
    (["stargraph", "run", "smoke", "--set", "noequals"], "key=value"),
    (["stargraph", "run", "smoke", "--runs", "nope"], "no run 'nope'"),
    (["stargraph", "run", "no-such-recipe"], "unknown recipe"),
    (["stargraph", "run", "missing.yaml"], "recipe file not found"),
    (["stargraph", "run", "smoke", "--resume"], "--resume needs --out"),
    (["stargraph", "run", "smoke", "--set", "stargraph.train_file=/no/such/file.txt"], "no such file"),
    (["stargraph", "generate", "--deg", "2", "--path", "3", "--nodes", "4", "--count", "1", "--out", "x"], "too small"),
])
def test_bad_input_is_one_clear_line(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("foresight: error:"), err
    assert needle in lines[0]


@pytest.mark.parametrize("args, line", [
    (["stargraph", "run", "smoke", "--set", "model.n_layerz=3"], "unknown key model.n_layerz; known keys: "),
    (["stargraph", "run", "smoke", "--set", "model.hidden_size=wide"], "model.hidden_size must be int, got 'wide'"),
    # a run not selected is parsed too: the whole file is checked before anything runs
    (["stargraph", "run", "smoke", "--runs", "ntp", "--set",
      "runs.top={objectives: [{name: top}], model: {n_heads: 5}}"],
     "runs.top: model.hidden_size (32) must be divisible by model.n_heads (5)"),
    # the text task: the model error comes before its data folder is even looked at
    (["train", "text/tiny", "--set", "text.data=/no/such/folder", "--set", "model.n_kv_heads=3"],
     "model.n_heads (4) must be divisible by model.n_kv_heads (3)"),
])
def test_a_bad_model_field_is_one_line_at_load_before_any_data(args, line, capsys, tmp_path, monkeypatch):
    import foresight.tasks as tasks

    monkeypatch.chdir(tmp_path)
    for task in tasks.TASKS:  # reaching a task (data generation, loading, models) would fail the test
        monkeypatch.setitem(tasks.TASKS, task, replace(tasks.TASKS[task], run=lambda *a, **k: pytest.fail("started")))
    code, _, err = _run(args + ["--out", str(tmp_path / "out")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("foresight: error:"), err
    assert line in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_model_value_the_task_decides_is_refused_when_it_differs(capsys, tmp_path):
    code, _, err = _run(SMOKE + ["--set", "model.vocab_size=99", "--out", str(tmp_path / "out")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].endswith("model.vocab_size=99 does not match the task, which needs 14; remove it")


def test_invalid_yaml_and_wrong_task(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    code, _, err = _run(["stargraph", "run", str(bad)], capsys)
    assert code == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1
    bad.write_text("task: chess\nruns: {a: [{name: ntp}]}\n")
    code, _, err = _run(["train", str(bad)], capsys)
    assert code == 2 and "'task' must be" in err


def test_usage_error_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "foresight", "stargraph", "generate", "--deg", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid int value" in lines[0] and "Traceback" not in proc.stderr
