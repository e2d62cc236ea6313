"""`foresight bench stargraph GRID` end to end on a tiny grid (2 objectives x 2 seeds, a few steps): one JSON per
cell and a leaderboard; a second call runs only what is missing; cells of `foresight stargraph run --results` are
recognised (same name, same settings) and reused; a stopped cell continues from its checkpoint; a cell file with
other settings, and bad grid files, are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foresight.cli.main import main

# smoke's model at a few steps on 64 graphs: seconds for the whole grid
TINY = """
graphs:
  g23:
    recipe: smoke
    set: {train.steps: 4, train.eval_every: 2, train.log_every: 2, stargraph.train_size: 64,
          stargraph.test_size: 16, stargraph.eval_batch_size: 16, train.tensorboard: false}
objectives:
  ntp: [{name: ntp}]
  top: [{name: ntp}, {name: top, window: 4096}]
seeds:
  default: [1, 2]
"""
SETS = ["train.steps=4", "train.eval_every=2", "train.log_every=2", "stargraph.train_size=64",
        "stargraph.test_size=16", "stargraph.eval_batch_size=16", "train.tensorboard=false"]


def _grid(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _bench(grid: Path, *extra, capsys=None) -> tuple[int, str, str]:
    code = main(["bench", "stargraph", str(grid), "--jobs", "1", *map(str, extra)])
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def _files(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.json"))}


@pytest.mark.slow
def test_tiny_grid_end_to_end_then_only_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = _grid(tmp_path)
    code, out, err = _bench(grid, capsys=capsys)
    assert code == 0, err
    res = tmp_path / "results" / "benchmark" / "tiny"
    first = _files(res / "g23")
    assert sorted(first) == sorted(f"smoke-g2x3-{o}-4steps-full-seed{s}.json" for o in ("ntp", "top") for s in (1, 2))
    cell = json.loads((res / "g23" / "smoke-g2x3-top-4steps-full-seed2.json").read_text())
    assert cell["steps"] == 4 and cell["seed"] == 2 and cell["partial"] is False
    assert cell["command"] == f"foresight bench stargraph {grid} --only g23/top --seeds 2"
    readme = (res / "README.md").read_text()
    assert "## g23: G(2,3), N = 10" in readme and "| ntp | NTP | 2 |" in readme and "| top | TOP | 2 |" in readme
    assert "--only g23/ntp --seeds 1`" in readme and (res / "exact_match.png").stat().st_size > 0

    # again: nothing runs, nothing is rewritten; one more seed: only its two cells run
    code, out, _ = _bench(grid, capsys=capsys)
    assert code == 0 and "4 done, 0 partial (continued from their checkpoints), 0 to run" in out
    assert _files(res / "g23") == first
    grid.write_text(TINY.replace("default: [1, 2]", "default: [1, 2, 3]"))
    code, out, _ = _bench(grid, capsys=capsys)
    assert code == 0 and "4 done, 0 partial (continued from their checkpoints), 2 to run" in out
    now = _files(res / "g23")
    assert {k: v for k, v in now.items() if k in first} == first and len(now) == 6

    # --only and --seeds cut the grid; --dry-run runs nothing
    code, out, _ = _bench(grid, "--only", "g23/top", "--seeds", "3", "--dry-run", capsys=capsys)
    assert code == 0 and "| g23 | top | 3 |" in out and "| g23 | ntp |" not in out and "1 cells, 0 to run" in out


@pytest.mark.slow
def test_cells_of_stargraph_run_are_reused_and_other_settings_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sets = [a for s in SETS for a in ("--set", s)]
    assert main(["stargraph", "run", "smoke", "--runs", "ntp", "--seeds", "1", "--results", "old", "--out", "r",
                 *sets]) == 0
    old = tmp_path / "old" / "smoke-g2x3-ntp-4steps-full-seed1.json"
    grid = _grid(tmp_path)
    code, out, _ = _bench(grid, "--only", "g23/ntp", "--reuse", "old", "--dry-run", capsys=capsys)
    assert code == 0 and "| g23 | ntp | 1 |" in out and "| reuse |" in out and "2 cells, 1 to run" in out
    code, out, _ = _bench(grid, "--only", "g23/ntp", "--reuse", "old", capsys=capsys)
    assert code == 0 and "reused old/smoke-g2x3-ntp-4steps-full-seed1.json" in out
    res = tmp_path / "results" / "benchmark" / "tiny" / "g23"
    assert (res / old.name).read_text() == old.read_text()  # copied as it was, not rerun
    assert (res / "smoke-g2x3-ntp-4steps-full-seed2.json").is_file()

    # the same file name with another setting (learning rate): refused in one line, nothing runs
    grid.write_text(TINY.replace("train.steps: 4,", "train.steps: 4, train.lr: 0.005,"))
    code, out, err = _bench(grid, capsys=capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds this cell with other settings (train.lr: 0.003 there, 0.005 in the grid)" in err


@pytest.mark.slow
def test_a_stopped_cell_is_partial_and_continues_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    from foresight.tasks import pool

    monkeypatch.chdir(tmp_path)
    grid = _grid(tmp_path, TINY.replace("train.steps: 4", "train.steps: 60").replace(
        "train.eval_every: 2", "train.eval_every: 0").replace("train.log_every: 2", "train.log_every: 1000")
        .replace("stargraph.test_size: 16", "stargraph.test_size: 4").replace("[1, 2]", "[1]"))
    # the time is up after 25 questions (the Trainer asks before every step): a stop at a known step, on any machine
    calls = iter(range(10**6))
    monkeypatch.setattr(pool.Clock, "left", lambda self: float("inf") if next(calls) < 25 else 0.0)
    code, out, err = _bench(grid, "--only", "g23/ntp", capsys=capsys)
    assert code == 0, err
    assert "stopped before every cell finished: run the same command again to continue" in out
    res = tmp_path / "results" / "benchmark" / "tiny" / "g23"
    partial = json.loads((res / "smoke-g2x3-ntp-60steps-full-seed1-partial.json").read_text())
    assert partial["partial"] is True and 10 < partial["steps"] < 30
    assert f"partial: 1 (step {partial['steps']} of 60: " in (res.parent / "README.md").read_text()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    code, out, err = _bench(grid, "--only", "g23/ntp", capsys=capsys)
    assert code == 0 and "1 partial (continued from their checkpoints)" in out, err
    full = json.loads((res / "smoke-g2x3-ntp-60steps-full-seed1.json").read_text())
    assert full["steps"] == 60 and full["partial"] is False
    assert [e["step"] for e in full["evals"]] == [partial["steps"], 60], full["evals"]  # resumed from the stop
    readme = (res.parent / "README.md").read_text()
    assert "partial:" not in readme and "| ntp | NTP | 1 |" in readme


@pytest.mark.parametrize("text, fragment", [
    ("graphs: [1]\n", "'objectives' must map run names"),
    ("objectives: {ntp: [{name: ntp}]}\nseeds: {default: [1]}\n", "'graphs' must map graph names"),
    ("graphs: {g: {recipe: smoke}}\nobjectives: {ntp: [{name: ntp}]}\n", "seeds must map 'default'"),
    ("graphs: {g: {recipe: smoke}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {default: [1, 1]}\n",
     "seeds.default lists a seed twice"),
    ("graphs: {g: {recipe: smoke}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {default: [-1]}\n",
     "seeds.default must be a non-empty list of integer seeds"),
    ("graphs: {g: {recipe: smoke}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {top: [1]}\n",
     "seeds.top: no such objective"),
    ("graphs: {g: {recipe: smoke}}\nobjectives: {ntp: [{name: ntp}], top: [{name: top}]}\nseeds: {ntp: [1]}\n",
     "seeds gives no seeds for 'top'"),
    ("graphs: {g: {recipe: nosuch}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {default: [1]}\n",
     "unknown recipe 'nosuch'"),
    ("graphs: {g: {recipe: smoke, objectives: [mtp]}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {default: [1]}\n",
     "graphs.g.objectives: no objective 'mtp'"),
    ("graphs: {g: {recipe: smoke, set: {runs: {}}}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {default: [1]}\n",
     "may not change runs"),
    ("graphs: {g: {recipe: smoke, set: {model.hidden_sise: 8}}}\nobjectives: {ntp: [{name: ntp}]}\n"
     "seeds: {default: [1]}\n", "graphs.g: "),
    ("graphs: {g: {recipe: smoke}}\nobjectives: {ntp: [{name: nope}]}\nseeds: {default: [1]}\n", "graphs.g: "),
    ("graphs: {../x: {recipe: smoke}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {default: [1]}\n",
     "graph name '../x' must be letters"),
    ("graphs: {g: {recipe: smoke, sets: {}}}\nobjectives: {ntp: [{name: ntp}]}\nseeds: {default: [1]}\n",
     "graphs.g: unknown key 'sets'"),
    ("graph: {}\n", "unknown key 'graph'"),
    ("- 1\n", "must be a mapping"),
])
def test_bad_grid_files_are_one_line(tmp_path, capsys, text, fragment):
    code, _, err = _bench(_grid(tmp_path, text), "--dry-run", capsys=capsys)
    assert code == 2 and err.startswith("foresight: error: ") and err.count("\n") == 1, err
    assert fragment in err


@pytest.mark.parametrize("args, fragment", [
    (["--only", "g23/mtp"], "--only g23/mtp: no such cell"),
    (["--only", "nope"], "--only nope: no such cell"),
    (["--seeds", "9"], "none of the selected cells"),
    (["--jobs", "-1"], "--jobs must be in 0 .. 1024"),
    (["--reuse", "nowhere"], "--reuse nowhere: no such folder"),
])
def test_bad_options_are_one_line(tmp_path, capsys, args, fragment):
    code, _, err = _bench(_grid(tmp_path), "--dry-run", *args, capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


@pytest.mark.parametrize("name", ["g24", "g25_50", "g34"])
def test_the_shipped_grids_parse_and_plan(tmp_path, name):
    """Every grid in configs/bench/ loads, its recipes parse and its cells are planned (sizes on the meta device)."""
    from foresight.tasks.bench import load_grid, plan

    grid = load_grid(name)
    cells = [c for gp in plan(grid, tmp_path) for c in gp.cells]
    assert {c.objective for c in cells} >= {"ntp", "top", "mtp2", "dsmtp2", "fsp", "nextlat"}
    assert all(c.status == "to run" and c.flops > 0 for c in cells)
    main = [c for c in cells if c.graph == f"{name}_10_d4"] if name == "g24" else cells  # g24: two more graphs
    per = {o: sorted(c.seed for c in main if c.objective == o) for o in {c.objective for c in main}}
    if name == "g24":  # NTP and TOP over 10 seeds, the others over 3 (issue 24 item 3), at 4 layers
        assert per["ntp"] == per["top"] == list(range(20, 30)) and per["fsp"] == per["mutor"] == [20, 21, 22]
        demo = {(c.objective, c.seed) for c in cells if c.graph == "g24_10"}  # the demo's 3 layers: NTP, TOP x 5
        assert demo == {(o, s) for o in ("ntp", "top") for s in range(20, 25)}
        assert {(c.graph, c.objective) for c in cells if c.graph == "g24_10_d4_trelawney"} == {
            ("g24_10_d4_trelawney", "ntp"), ("g24_10_d4_trelawney", "top")}
        d4 = [c for c in cells if c.graph == "g24_10_d4"]  # the 4-layer recipe fix: NTP and TOP x 10, the rest x 3
        assert sorted(c.seed for c in d4 if c.objective == "top") == list(range(20, 30))
        assert sorted(c.seed for c in d4 if c.objective == "fsp") == [20, 21, 22] and len(d4) == 20 + 5 * 3
        assert cells[0].file.name == "demo-g2x4-ntp-3500steps-full-seed20.json"  # `stargraph run demo`'s name
    else:
        assert all(len(s) >= 3 for s in per.values())
