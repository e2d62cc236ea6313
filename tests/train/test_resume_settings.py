"""--resume refuses a changed recipe (issue 21, item 5): every setting that changes what a step computes is stored
with the checkpoint and compared; the first difference is one line, ``--allow-changes`` continues with a warning,
settings that change nothing (logging, cadence, device, stop_after) pass, and an old checkpoint without settings
is resumed with a warning."""

from __future__ import annotations

import pytest

from foresight.cli.main import main
from foresight.model import ModelConfig
from foresight.objectives import parse_objectives
from foresight.tasks.stargraph import StarGraphTaskConfig
from foresight.train.checkpoint import list_checkpoints, load_checkpoint
from foresight.train.config import TrainConfig
from foresight.train.fingerprint import differences, run_settings
from foresight.train.state_file import load_state, save_state

# 2 steps, one checkpoint at the end: the smallest run that leaves something to resume
TINY = ["--set", "train.steps=2", "--set", "train.eval_every=0", "--set", "train.log_every=1",
        "--set", "stargraph.test_size=8"]


def _run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _error(code: int, err: str, fragment: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("foresight: error:")]
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def top_run(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(["stargraph", "run", "smoke", "--runs", "top", *TINY, "--out", out], capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize("override, line", [
    ("train.lr=0.002", "--resume: train.lr was 0.003 in the run, 0.002 now"),
    ("stargraph.seed=3", "--resume: stargraph.seed was 0 in the run, 3 now"),
    ("train.seed=1", "--resume: train.seed was 0 in the run, 1 now"),
    ("train.batch_size=16", "--resume: train.batch_size was 32 in the run, 16 now"),
    ("model.n_heads=4", "--resume: model.n_heads was 2 in the run, 4 now"),
])
def test_a_changed_setting_is_refused_in_one_line(top_run, capsys, override, line):
    before = (top_run / "top" / "metrics.jsonl").read_bytes()
    ckpt = list_checkpoints(top_run / "top" / "checkpoints")
    got = _error(*_run(["stargraph", "run", "smoke", "--runs", "top", *TINY, "--set", override, "--out", top_run,
                        "--resume"], capsys)[::2], line)
    assert "--allow-changes" in got
    assert (top_run / "top" / "metrics.jsonl").read_bytes() == before  # nothing touched
    assert list_checkpoints(top_run / "top" / "checkpoints") == ckpt


def test_a_changed_objective_setting_is_named_by_its_recipe_place(tmp_path, top_run, capsys):
    recipe = tmp_path / "r.yaml"
    text = (top_run / "recipe.json").read_text()
    recipe.write_text(text.replace('"window": 4096', '"window": 16'))  # JSON is YAML
    _error(*_run(["stargraph", "run", recipe, "--runs", "top", "--out", top_run, "--resume"], capsys)[::2],
           "--resume: runs.top[1].window was 4096 in the run, 16 now")


def test_allow_changes_continues_and_records_the_new_settings(top_run, capsys):
    code, _, err = _run(["stargraph", "run", "smoke", "--runs", "top", *TINY, "--set", "train.steps=3", "--set",
                         "train.lr=0.002", "--out", top_run, "--resume", "--allow-changes"], capsys)
    assert code == 0, err
    assert "warning: --allow-changes: continuing" in err and "train.lr was 0.003 in the run, 0.002 now" in err
    assert "train.steps was 2 in the run, 3 now" in err
    state = load_checkpoint(top_run / "top")
    assert state["step"] == 3 and state["settings"]["train.lr"] == 0.002
    # the new settings are the run's now: a plain resume with them is quiet
    code, _, err = _run(["stargraph", "run", "smoke", "--runs", "top", *TINY, "--set", "train.steps=3", "--set",
                         "train.lr=0.002", "--out", top_run, "--resume"], capsys)
    assert code == 0 and "warning" not in err, err


def test_settings_that_change_nothing_computed_may_change(top_run, capsys):
    code, _, err = _run(["stargraph", "run", "smoke", "--runs", "top", *TINY, "--set", "train.log_every=2",
                         "--set", "train.eval_every=1", "--set", "train.keep_last=3", "--set",
                         "train.micro_batch_size=8", "--set", "stargraph.eval_batch_size=4", "--set",
                         "train.device=auto", "--out", top_run, "--resume"], capsys)
    assert code == 0 and "warning" not in err and "error" not in err, err


def test_an_old_checkpoint_without_settings_resumes_with_a_warning(top_run, capsys):
    [(_, path)] = list_checkpoints(top_run / "top" / "checkpoints")
    state = load_state(path)
    del state["settings"]
    save_state(state, path)
    code, _, err = _run(["stargraph", "run", "smoke", "--runs", "top", *TINY, "--set", "train.lr=0.002",
                         "--out", top_run, "--resume"], capsys)
    assert code == 0, err
    assert "warning:" in err and "records no run settings" in err and "Traceback" not in err


def test_allow_changes_needs_resume(tmp_path, capsys):
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / "o", "--allow-changes"], capsys)[::2],
           "--allow-changes applies to --resume only")
    assert not (tmp_path / "o").exists()


def test_settings_cover_every_section_and_name_the_first_difference():
    specs = parse_objectives([{"name": "ntp"}, {"name": "top", "window": 8}])
    model = ModelConfig(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=8)
    base = dict(run="top", specs=specs, model=model, task=("stargraph", StarGraphTaskConfig()))
    a = run_settings(train=TrainConfig(), **base)
    assert a["runs.top[1].window"] == 8 and a["runs.top[1].name"] == "top" and a["stargraph.seed"] == 0
    assert "train.log_every" not in a and "stargraph.jobs" not in a and "train.stop_after" not in a
    b = run_settings(train=TrainConfig(lr=1e-3, log_every=3), **base)
    assert differences(a, b) == ["train.lr was 0.0003 in the run, 0.001 now"]
    fewer = run_settings(**{**base, "specs": specs[:1]}, train=TrainConfig())
    assert differences(a, fewer)[0] == "runs.top[1].name was \"top\" in the run, not set now"
