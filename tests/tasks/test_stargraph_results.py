"""The star-graph results path at a tiny size on CPU: generator -> training -> greedy evaluation -> one JSON per
(run, seed) cell -> README table + plot; seeds, --full-schedule, --skip-existing, --time-limit, and that the
command stored in a cell reproduces it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from foresight.cli.main import main
from foresight.tasks.stargraph import RESULT_FORMAT

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--set", "train.steps=4", "--set", "train.eval_every=2"]

# Field -> type(s) every cell JSON must carry (None allowed only where listed in NULLABLE).
FIELDS = {
    "format": str, "run": str, "objective": str, "objectives": list, "graph": dict, "recipe": str, "seed": int,
    "data_seed": int, "train_size": int, "test_size": int, "params": int, "total_params": int, "batch_size": int,
    "schedule_steps": int, "steps": int, "stopped_early": bool, "early_stop": (dict, type(None)),
    "wall_clock_s": float, "tokens": int, "tokens_per_s": float, "tokens_per_s_wall": float,
    "final": dict, "final_exact_match": float, "best_exact_match": float, "best_step": int, "v1_acc": float,
    "valid_arm": float, "curve": list, "evals": list, "device": str, "device_name": str, "torch": str,
    "python": str, "foresight": str, "date": str, "command": str, "train": dict, "config": dict,
}
NULLABLE = {"mfu", "peak_mem_gib", "cuda", "git_commit", "compiled"}


def _run(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _cells(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_whole_path_writes_cells_then_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the stored commands use relative paths: run them from here
    code, out, err = _run(["stargraph", "run", "smoke", "--runs", "ntp,top", "--seeds", "0,1", *TINY,
                           "--results", "results/stargraph", "--out", "runs/a"], capsys)
    assert code == 0, err
    cells = _cells(tmp_path / "results" / "stargraph")
    assert sorted(cells) == [f"smoke-g2x3-{r}-4steps-full-seed{s}.json" for r in ("ntp", "top") for s in (0, 1)]
    for name, cell in cells.items():
        for key, types in FIELDS.items():
            assert isinstance(cell[key], types), (name, key, cell[key])
        assert set(NULLABLE) <= set(cell)
        assert cell["format"] == RESULT_FORMAT
        assert cell["objective"] == {"ntp": "NTP", "top": "TOP"}[cell["run"]]
        assert cell["graph"] == {"deg": 2, "path": 3, "nodes": 10}
        assert cell["steps"] == cell["schedule_steps"] == 4 and cell["early_stop"] is None
        assert cell["train"]["seed"] == cell["config"]["train"]["seed"] == cell["seed"]
        assert cell["data_seed"] == 0  # the data set does not follow the seed
        assert [s for s, _ in cell["curve"]] == [2, 4] and len(cell["evals"]) == 2
        assert cell["final_exact_match"] == cell["final"]["exact_match"] == cell["curve"][-1][1]
        assert 0 <= cell["v1_acc"] <= 1 and 0 <= cell["valid_arm"] <= 1
        assert cell["best_exact_match"] == max(v for _, v in cell["curve"])
        assert cell["tokens"] == 4 * 32 * 17 and cell["tokens_per_s"] > 0 and cell["wall_clock_s"] > 0
        assert cell["device"] == "cpu" and cell["date"][:2] == "20"
        assert cell["command"] == (f"foresight stargraph run smoke --runs {cell['run']} --seeds {cell['seed']} "
                                   "--set train.steps=4 --set train.eval_every=2 --results results/stargraph")
    # Seeds change the initialisation (and batch order), so the first training losses differ.
    losses = {}
    for s in (0, 1):
        lines = (tmp_path / "runs/a" / f"ntp-seed{s}" / "metrics.jsonl").read_text().splitlines()
        losses[s] = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    assert losses[0] and losses[0] != losses[1]

    code, out, err = _run(["stargraph", "report", "results/stargraph"], capsys)
    assert code == 0, err
    readme = (tmp_path / "results/stargraph/README.md").read_text()
    assert "| NTP |" in readme and "| TOP |" in readme and "s0:" in readme and "s1:" in readme
    assert readme.count("`foresight stargraph run smoke --runs") == 4
    assert (tmp_path / "results/stargraph/exact_match.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The stored command reproduces its cell exactly (CPU, same seed): same curve and metrics.
    cell = cells["smoke-g2x3-top-4steps-full-seed1.json"]
    argv = shlex.split(cell["command"])
    assert argv[:2] == ["foresight", "stargraph"]
    argv = [a if a != "results/stargraph" else "again" for a in argv[1:]] + ["--out", "runs/b"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "smoke-g2x3-top-4steps-full-seed1.json").read_text())
    for key in ("curve", "evals", "final", "steps", "params", "seed", "objectives"):
        assert again[key] == cell[key], key


def test_full_schedule_turns_early_stopping_off(tmp_path, capsys):
    stop_at_once = ["--set", "train.early_stop_metric=exact_match", "--set", "train.early_stop_threshold=0",
                    "--set", "train.early_stop_patience=1"]
    for extra, name in (([], "smoke-g2x3-ntp-4steps-seed0.json"),
                        (["--full-schedule"], "smoke-g2x3-ntp-4steps-full-seed0.json")):
        code, _, err = _run(["stargraph", "run", "smoke", "--runs", "ntp", *TINY, *stop_at_once, *extra,
                             "--results", str(tmp_path / "res"), "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        cell = json.loads((tmp_path / "res" / name).read_text())
        if extra:
            assert cell["steps"] == 4 and not cell["stopped_early"] and cell["early_stop"] is None
            assert cell["config"]["train"]["early_stop_metric"] is None and "--full-schedule" in cell["command"]
        else:
            assert cell["steps"] == 2 and cell["stopped_early"]
            assert cell["early_stop"] == {"metric": "exact_match", "threshold": 0.0, "patience": 1}


def test_skip_existing_and_time_limit(tmp_path, capsys):
    base = ["stargraph", "run", "smoke", *TINY, "--results", str(tmp_path / "res")]
    code, _, err = _run(base + ["--runs", "ntp", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, out, err = _run(base + ["--runs", "ntp", "--skip-existing", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert "skip ntp seed 0" in out and "nothing to run" in out and not (tmp_path / "b").exists()
    # A limit that has passed before the first cell: it is not started, and the command still succeeds.
    code, out, err = _run(base + ["--runs", "top", "--time-limit", "1e-9", "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert "not run (stopped or out of time): top seed 0" in out
    assert sorted(p.name for p in (tmp_path / "res").glob("*.json")) == ["smoke-g2x3-ntp-4steps-full-seed0.json"]


@pytest.mark.parametrize("args, needle", [
    (["--skip-existing"], "--skip-existing needs --results"),
    (["--time-limit", "0"], "--time-limit must be > 0"),
])
def test_bad_options_are_one_line(args, needle, capsys, tmp_path):
    code, _, err = _run(["stargraph", "run", "smoke", *args, "--out", str(tmp_path)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_seed_list_is_checked(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["stargraph", "run", "smoke", "--seeds", "0,0"])
    assert exc.value.code == 2 and "distinct" in capsys.readouterr().err


def test_budget_recipe_is_the_paper_recipe_but_its_schedule():
    """paper_budget differs from paper only in the schedule's length, its warm-up share and the eval interval."""
    import yaml

    configs = Path(__file__).resolve().parents[2] / "configs" / "stargraph"
    paper, budget = (yaml.safe_load((configs / f"{n}.yaml").read_text()) for n in ("paper", "paper_budget"))
    schedule = {"steps", "warmup_steps", "eval_every"}
    assert {k: v for k, v in paper["train"].items() if k not in schedule} == \
        {k: v for k, v in budget["train"].items() if k not in schedule}
    assert {k: v for k, v in paper.items() if k != "train"} == {k: v for k, v in budget.items() if k != "train"}
    b = budget["train"]
    assert b["warmup_steps"] == round(b["steps"] * paper["train"]["warmup_steps"] / paper["train"]["steps"])


def test_time_limit_does_not_start_a_cell_that_would_not_finish(tmp_path, capsys, monkeypatch):
    from foresight.tasks import pool

    clock = pool.Clock(100.0)
    assert clock.estimate(1e12) is None  # nothing measured yet: the first cell always starts
    clock.observe(10.0, 1e12)
    assert clock.estimate(2e12) == pytest.approx(21.0) and 99 < clock.left() <= 100

    # Every cell after the first is estimated at 1e9 s: the first runs and is recorded, the rest are not started.
    monkeypatch.setattr(pool.Clock, "estimate", lambda self, flops: None if self.s_per_flop is None else 1e9)
    code, out, err = _run(["stargraph", "run", "smoke", "--runs", "ntp,top", "--seeds", "0,1", *TINY, "--time-limit",
                           "600", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "time limit: top seed 0 needs about 1000000000 s" in out
    assert "not run (stopped or out of time): top seed 0, ntp seed 1, top seed 1" in out
    assert [p.name for p in (tmp_path / "res").glob("*.json")] == ["smoke-g2x3-ntp-4steps-full-seed0.json"]


def test_outcome_words_and_wilson_interval():
    from foresight.tasks.stargraph_tables import outcome, wilson_interval

    assert outcome(0.95, 0.95, 0.95) == "solved"
    assert outcome(0.50, 1.00, 0.50) == "chance with shortcut"
    assert outcome(0.75, 0.98, 0.75) == "shortcut, above chance"
    assert outcome(0.50, 0.50, 0.52) == "chance on v1, backward shortcut"
    assert outcome(0.10, 0.20, 0.50) == "no shortcut"
    # Wilson 95 %: 250 of 500 -> 0.4563 .. 0.5437 (a literal value); the edges stay inside [0, 1].
    lo, hi = wilson_interval(250, 500)
    assert abs(lo - 0.4563) < 1e-4 and abs(hi - 0.5437) < 1e-4
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
