"""`foresight stargraph report` on hand-made cell JSONs: Table 5's rows and values, aggregation across seeds,
objective names from objective lists, grouping by schedule, the commands, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.tasks.stargraph import RESULT_FORMAT, objective_label
from foresight.tasks.stargraph_report import load_cells, summarize, write_report

SPECS = {
    "ntp": [{"name": "ntp"}],
    "top": [{"name": "ntp"}, {"name": "top", "window": 4096}],
    "mtp4": [{"name": "ntp"}, {"name": "mtp", "n": 4}],
    "dsmtp4": [{"name": "ntp"}, {"name": "dsmtp", "preset": "top_paper", "depth": 3}],
}


def cell(run: str, seed: int, curve: list[tuple[int, float]], *, steps: int = 1500, deg: int = 5, path: int = 5,
         nodes: int = 30, early: bool = True) -> dict:
    """A result JSON as `stargraph run --results` writes it, with only what the report reads filled in."""
    final = curve[-1][1]
    return {
        "format": RESULT_FORMAT, "run": run, "objective": objective_label(SPECS[run]), "objectives": SPECS[run],
        "graph": {"deg": deg, "path": path, "nodes": nodes}, "recipe": "paper_budget", "seed": seed, "data_seed": 0,
        "train_size": 300000, "test_size": 10000, "params": 14188416, "total_params": 14201472, "batch_size": 4096,
        "schedule_steps": steps, "steps": curve[-1][0], "stopped_early": curve[-1][0] < steps,
        "early_stop": {"metric": "exact_match", "threshold": 0.995, "patience": 2} if early else None,
        "wall_clock_s": 100.0 + seed, "tokens_per_s": 3.0e6, "final_exact_match": final,
        "best_exact_match": max(v for _, v in curve), "v1_acc": final, "valid_arm": 1.0, "curve": curve,
        "device": "cuda:0", "device_name": "NVIDIA H200", "torch": "2.11.0+cu130", "date": "2026-11-24T10:00:00+00:00",
        "train": {"lr": 3e-4, "min_lr": 1e-4, "warmup_steps": 307, "eval_every": 100},
        "command": f"foresight stargraph run paper_budget --runs {run} --seeds {seed} --results results/stargraph",
    }


def write(folder: Path, cells: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c in cells:
        (folder / f"{c['run']}-{c['schedule_steps']}-{c['seed']}.json").write_text(json.dumps(c))


def row(readme: str, objective: str, nth: int = 0) -> list[str]:
    rows = [line for line in readme.splitlines() if line.startswith(f"| {objective} |")]
    return [c.strip() for c in rows[nth].strip("|").split("|")]


def test_objective_labels_follow_the_paper():
    assert [objective_label(SPECS[r]) for r in ("ntp", "top", "mtp4", "dsmtp4")] == ["NTP", "TOP", "MTP-4", "DS-MTP-4"]
    assert objective_label([{"name": "ntp"}, {"name": "mtp", "n": 2}]) == "MTP-2"
    assert objective_label([{"name": "ntp"}, {"name": "dsmtp", "depth": 1}]) == "DS-MTP-2"
    assert objective_label([{"name": "top"}]) == "TOP (no NTP)"


def test_table_beside_table5_with_seed_aggregation(tmp_path):
    folder = tmp_path / "results"
    write(folder, [
        cell("ntp", 0, [(100, 0.0), (1500, 0.0)]),
        cell("ntp", 1, [(100, 0.0), (1500, 0.01)]),
        cell("ntp", 2, [(100, 0.0), (1500, 0.02)]),
        cell("top", 0, [(100, 0.2), (800, 0.996), (900, 1.0)]),
        cell("top", 1, [(100, 0.2), (1000, 0.999), (1100, 0.997)]),
        cell("mtp4", 0, [(100, 0.1), (1500, 0.2)]),
    ])
    readme_path, plot = write_report(folder)
    readme = readme_path.read_text()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Table 5's rows in the paper's order, each with the paper's G(5,5) value; rows we did not run say so.
    table5 = ["NTP", "MTP-2", "MTP-4", "DS-MTP-2", "DS-MTP-4", "TOP"]
    order = [line.split("|")[1].strip() for line in readme.split("## Commands")[0].splitlines()
             if line.startswith("| ") and line.split("|")[1].strip() in table5]
    assert order == table5
    assert row(readme, "NTP")[:5] == ["NTP", "14.2M / 14.2M", "0.1", "1.0 ± 1.0 (0.0–2.0)", "3"]
    assert row(readme, "NTP")[5] == "s0: 0.0 @ 1,500, s1: 1.0 @ 1,500, s2: 2.0 @ 1,500"
    assert row(readme, "NTP")[6] == "s0: —, s1: —, s2: —"
    assert row(readme, "MTP-2")[:4] == ["MTP-2", "16.0M / —", "0.1", "not run"]
    assert row(readme, "MTP-4")[2:5] == ["19.5", "20.0", "1"]
    assert row(readme, "DS-MTP-2")[2] == "19.2" and row(readme, "DS-MTP-4")[2] == "19.3"
    top = row(readme, "TOP")
    assert top[2:5] == ["100", "99.8 ± 0.2 (99.7–100.0)", "2"]
    assert top[5] == "s0: 100.0 @ 900, s1: 99.7 @ 1,100" and top[6] == "s0: 800, s1: 1,000"
    assert "recipe `paper_budget`, 1,500-step schedule, early stop on" in readme
    assert "NVIDIA H200, torch 2.11.0+cu130" in readme
    assert "**Differs from the paper's setup in:** steps 1,500 (paper 7,324)." in readme
    assert readme.count("`foresight stargraph run paper_budget --runs") == 6
    assert "`foresight stargraph run paper_budget --runs top --seeds 1 --results results/stargraph`" in readme

    s = summarize([c for c in load_cells(folder) if c["run"] == "ntp"])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.01) and s["sd"] == pytest.approx(0.01)


def test_groups_by_schedule_and_graph(tmp_path, capsys):
    folder = tmp_path / "results"
    write(folder, [
        cell("top", 0, [(7324, 1.0)], steps=7324, early=False),
        cell("top", 0, [(1500, 0.5)]),
        cell("ntp", 0, [(300, 0.3)], steps=300, deg=3, path=3),
    ])
    assert main(["stargraph", "report", str(folder)]) == 0
    readme = (folder / "README.md").read_text()
    assert "wrote" in capsys.readouterr().out
    titles = [line for line in readme.splitlines() if line.startswith("## G(")]
    assert titles == ["## G(3,3), N = 30 — recipe `paper_budget`, 300-step schedule, early stop on",
                      "## G(5,5), N = 30 — recipe `paper_budget`, 7,324-step schedule, full schedule",
                      "## G(5,5), N = 30 — recipe `paper_budget`, 1,500-step schedule, early stop on"]
    assert row(readme, "NTP")[2] == "33.8"  # Table 5, G(3,3)
    assert row(readme, "TOP", 1)[3] == "100.0" and row(readme, "TOP", 2)[3] == "50.0"


def test_graph_outside_table5_has_no_paper_column_values(tmp_path):
    folder = tmp_path / "results"
    write(folder, [cell("ntp", 0, [(10, 0.5)], deg=2, path=3, nodes=10)])
    readme = write_report(folder)[0].read_text()
    assert row(readme, "NTP")[1:3] == ["— / 14.2M", "—"]
    assert "| TOP |" not in readme.split("## Commands")[0]  # no Table 5 rows for a graph the table lacks


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(ForesightError, match="no such results folder"):
        load_cells(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForesightError, match="no result JSONs"):
        load_cells(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text("{not json")
    with pytest.raises(ForesightError, match="x.json: not a readable JSON"):
        load_cells(tmp_path / "bad")
    (tmp_path / "bad" / "x.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ForesightError, match="not a star-graph result"):
        load_cells(tmp_path / "bad")
    c = cell("ntp", 0, [(1, 0.0)])
    del c["curve"]
    (tmp_path / "bad" / "x.json").write_text(json.dumps(c))
    with pytest.raises(ForesightError, match="missing field 'curve'"):
        load_cells(tmp_path / "bad")
