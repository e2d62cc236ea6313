"""The benchmark leaderboard (`foresight bench report`) on hand-made cell JSONs: solved counts, the interval over
seeds, steps to solve, outcomes, partial cells, grouping per graph folder, a flat `stargraph run --results` folder,
and clear errors — each number checked against a hand computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.tasks.bench_report import load_cells, summarize, t_interval, write_leaderboard
from foresight.tasks.stargraph import RESULT_FORMAT
from foresight.tasks.stargraph_tables import held

SPECS = {"ntp": [{"name": "ntp"}], "top": [{"name": "ntp"}, {"name": "top", "weight": 2.0, "window": 4096}]}
LABELS = {"ntp": "NTP", "top": "TOP"}


def cell(run: str, seed: int, curve: list, *, valid: float = 1.0, wall: float = 400.0, partial: bool = False,
         nodes: int = 10) -> dict:
    """A cell JSON as `foresight stargraph run --results` / `foresight bench stargraph` write it (what is read)."""
    final = curve[-1][1]
    return {
        "format": RESULT_FORMAT, "run": run, "objective": LABELS[run], "objectives": SPECS[run],
        "graph": {"deg": 2, "path": 4, "nodes": nodes}, "recipe": "demo", "seed": seed, "train_size": 200000,
        "schedule_steps": 3500, "steps": curve[-1][0], "partial": partial, "early_stop": None,
        "final_exact_match": final, "v1_acc": final, "valid_arm": valid, "curve": curve, "wall_clock_s": wall,
        "device": "cpu", "device_name": "CPU (AMD EPYC)", "torch": "2.13.0+cpu", "python": "3.11.7",
        "foresight": "0.1.0", "git_commit": "abc", "date": f"2026-12-07 1{seed % 10}:00 UTC",
        "config": {"model": {"hidden_size": 48, "n_layers": 3}},
        "command": f"foresight bench stargraph g24 --only g24_10/{run} --seeds {seed}",
    }


def _write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


TOP = [cell("top", 20, [[250, 0.5], [500, 0.92], [750, 1.0]], wall=400.0),  # solved at 500
       cell("top", 21, [[250, 0.4], [500, 0.6], [1000, 0.95]], valid=0.98, wall=410.0),  # solved at 1000
       cell("top", 22, [[250, 0.5], [1000, 0.5]], wall=390.0)]  # chance with the shortcut


def test_t_interval_by_hand():
    assert t_interval([0.7]) is None and t_interval([]) is None
    # n = 3: mean 0.8167, s = sqrt(((0.1833)^2 + (0.1333)^2 + (0.3167)^2) / 2) = 0.27538, t_{0.975, 2} = 4.303
    lo, hi = t_interval([1.0, 0.95, 0.5])
    assert lo == pytest.approx(2.45 / 3 - 4.303 * math.sqrt(0.151667 / 2) / math.sqrt(3), abs=1e-5) and hi == 1.0
    assert lo == pytest.approx(0.132533, abs=1e-5)
    # n = 4, a narrow spread: mean 0.5, s = sqrt(0.001 / 3) = 0.0182574, t_{0.975, 3} = 3.182
    lo, hi = t_interval([0.48, 0.49, 0.51, 0.52])
    assert (lo, hi) == pytest.approx((0.5 - 3.182 * 0.0182574 / 2, 0.5 + 3.182 * 0.0182574 / 2), abs=1e-6)
    # past 31 seeds the normal quantile: 40 values, 20 at 0 and 20 at 1: s = sqrt(40 / 4 / 39)
    lo, hi = t_interval([0.0] * 20 + [1.0] * 20)
    assert hi - 0.5 == pytest.approx(1.96 * math.sqrt(10 / 39) / math.sqrt(40), abs=1e-9)


def test_summary_numbers_by_hand(tmp_path):
    s = summarize(TOP + [cell("top", 23, [[250, 0.3], [1200, 0.99]], partial=True)])
    assert s["seeds"] == 3 and s["solved"] == 2  # the partial cell is listed, not counted
    assert s["mean"] == pytest.approx(2.45 / 3)
    assert s["steps_to_solve"] == 750  # median of 500 and 1000
    assert s["valid_arm"] == pytest.approx(2.98 / 3)
    assert s["wall_s"] == 400.0
    assert s["per_seed"] == [(20, 1.0), (21, 0.95), (22, 0.5)]
    assert dict(s["outcomes"]) == {"solved": 2, "chance with shortcut": 1}
    assert s["partial"] == [(23, 1200, 3500, 0.99)]


def test_leaderboard_per_graph_folder(tmp_path, capsys):
    for c in TOP:
        _write(tmp_path / "g24_10", f"demo-g2x4-top-3500steps-full-seed{c['seed']}.json", c)
    _write(tmp_path / "g24_10", "demo-g2x4-ntp-3500steps-full-seed20.json", cell("ntp", 20, [[3500, 0.516]]))
    _write(tmp_path / "g24_10", "demo-g2x4-ntp-3500steps-full-seed21-partial.json",
           cell("ntp", 21, [[1200, 0.5]], partial=True))
    # a partial file whose cell has finished since (resumed) is left out
    _write(tmp_path / "g24_10", "demo-g2x4-top-3500steps-full-seed20-partial.json",
           cell("top", 20, [[300, 0.1]], partial=True))
    _write(tmp_path / "g24_20", "demo-g2x4-ntp-3500steps-full-seed20.json", cell("ntp", 20, [[3500, 0.25]], nodes=20))
    assert main(["bench", "report", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert (tmp_path / "exact_match.png").stat().st_size > 0
    assert "## g24_10: G(2,4), N = 10 — recipe demo, width 48, 3 layers, 200,000 training graphs, 3,500 steps" in readme
    assert "## g24_20: G(2,4), N = 20" in readme
    assert ("| top | TOP | 3 | 2 | 81.7 [13.3, 100.0] | 20: 100.0, 21: 95.0, 22: 50.0 | 99.3 | solved ×2, chance "
            "with shortcut | 750 | 400 |") in readme
    assert ("| ntp | NTP | 1 | 0 | 51.6 | 20: 51.6; partial: 21 (step 1200 of 3500: 50.0) | 100.0 | chance with "
            "shortcut | – |") in readme
    assert "| ntp | NTP | 1 | 0 | 25.0 | 20: 25.0 | 100.0 | chance with shortcut |" in readme
    assert "seed20-partial" not in readme and "`g24_10/demo-g2x4-ntp-3500steps-full-seed21-partial.json`" in readme
    assert "foresight bench stargraph g24 --only g24_10/top --seeds 22" in readme
    assert "- machine: CPU (AMD EPYC) (cpu)" in readme and "torch 2.13.0+cpu" in readme
    assert "wrote" in capsys.readouterr().out


def test_a_flat_stargraph_run_folder_is_read(tmp_path):
    for c in TOP:  # the format of `foresight stargraph run demo --results DIR` (e.g. /tmp/bench24's g24-10)
        _write(tmp_path, f"demo-g2x4-top-3500steps-full-seed{c['seed']}.json", c)
    readme, _ = write_leaderboard(tmp_path)
    text = readme.read_text()
    assert "## G(2,4), N = 10 — recipe demo" in text and "| top | TOP | 3 | 2 | 81.7 [13.3, 100.0]" in text
    assert [c["_group"] for c in load_cells(tmp_path)] == ["", "", ""]


@pytest.mark.parametrize("content, fragment", [
    ("{", "not a readable JSON file"),
    (json.dumps({"format": "other"}), "not a star-graph cell JSON"),
    (json.dumps({"format": RESULT_FORMAT, "run": "ntp"}), "missing field 'objective'"),
])
def test_bad_cell_files_are_one_line(tmp_path, content, fragment):
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(ForesightError, match=fragment):
        load_cells(tmp_path)


def test_empty_or_missing_folder(tmp_path, capsys):
    with pytest.raises(ForesightError, match="no cell JSONs"):
        load_cells(tmp_path)
    assert main(["bench", "report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such results folder" in err


def test_rows_put_the_baseline_first():
    from foresight.tasks.bench_report import _row_rank

    runs = ["zz", "top", "dsmtp2", "nextlat", "mtp2", "fsp", "ntp", "mutor"]
    assert sorted(runs, key=_row_rank) == ["ntp", "top", "mtp2", "dsmtp2", "fsp", "nextlat", "mutor", "zz"]


def test_an_early_stopped_cell_holds_its_last_value_in_the_plot():
    """Solved cells that early stopping ended keep their last value to the end of the schedule (else the mean over
    seeds falls to the unsolved seeds' once they stop); a partial or a full-length cell is drawn as it is."""
    stopped = {**cell("top", 20, [[250, 0.5], [500, 0.996], [750, 1.0]]), "stopped_early": True}
    stopped["schedule_steps"] = 1500
    assert held(stopped["curve"], stopped) == [[250, 0.5], [500, 0.996], [750, 1.0], [1000, 1.0], [1250, 1.0],
                                               [1500, 1.0]]
    partial = {**stopped, "partial": True}
    assert held(partial["curve"], partial) == [[250, 0.5], [500, 0.996], [750, 1.0]]
    repeated = {**stopped, "curve": [[250, 0.5], [500, 1.0], [500, 1.0]]}  # no spacing to hold the value at
    assert held(repeated["curve"], repeated) == [[250, 0.5], [500, 1.0], [500, 1.0]]
    full = cell("top", 21, [[250, 0.4], [500, 0.6]])
    assert held(full["curve"], full) == [[250, 0.4], [500, 0.6]]
