"""A run folder belongs to one run: refuse a used folder, --overwrite removes only foresight's files, a lock
stops a second concurrent run (a dead owner's lock is stale), --resume needs something to resume; resume falls
back past a broken newest checkpoint and names mismatching tensors; the divergence policy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foresight.cli.main import main
from foresight.train.checkpoint import list_checkpoints, load_checkpoint
from foresight.train.run_folder import LOCK, remove_run

TINY = ["--set", "train.steps=4", "--set", "train.eval_every=0", "--set", "train.ckpt_every=2", "--set",
        "train.log_every=1", "--runs", "ntp"]


def _run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _error(code: int, err: str, fragment: str, status: int = 2) -> str:
    lines = [line for line in err.splitlines() if line.startswith("foresight: error:")]
    assert code == status and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    return lines[0]


def test_a_used_folder_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)
    assert code == 0, err
    first = (out / "ntp" / "metrics.jsonl").read_text()
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[::2], "already holds a run")
    assert (out / "ntp" / "metrics.jsonl").read_text() == first  # untouched
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", out, "--resume", "--overwrite"], capsys)[::2],
           "give one of them")
    # --overwrite: foresight's files go, the user's stay.
    (out / "notes.txt").write_text("mine")
    (out / "ntp" / "mine.txt").write_text("mine too")
    code, _, err = _run(["stargraph", "run", "smoke", *TINY, "--set", "train.steps=2", "--out", out, "--overwrite"],
                        capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine" and (out / "ntp" / "mine.txt").read_text() == "mine too"
    assert [s for s, _ in list_checkpoints(out / "ntp" / "checkpoints")] == [2]  # the old run's step 4 is gone
    steps = [json.loads(line)["step"] for line in (out / "ntp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 2]  # one run's metrics (meta, two steps, final eval), not two stitched together
    assert not (out / LOCK).exists() and not (out / "ntp" / LOCK).exists()  # released


def test_overwrite_removes_exactly_what_foresight_recorded_never_through_a_link(tmp_path, capsys):
    """Issue 21: the user's files named like foresight's stay, and a link inside the run folder is not followed."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    assert _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[0] == 0
    mine = {out / "mine" / "metrics.jsonl": "my metrics", out / "compare.md": "my notes", out / ".draft.tmp": "draft",
            out / "ntp" / ".draft.tmp": "draft 2", out / "mine" / "checkpoints" / "keep.txt": "mine"}
    for p, text in mine.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for name in ("checkpoints", "eval"):  # a folder elsewhere that a link in the run folder points at
        (elsewhere / name).mkdir(parents=True)
        (elsewhere / name / "precious.txt").write_text("keep")
    (out / "linked").symlink_to(elsewhere)
    code, _, err = _run(["stargraph", "run", "smoke", *TINY, "--set", "train.steps=2", "--out", out, "--overwrite"],
                        capsys)
    assert code == 0, err
    assert all(p.read_text() == text for p, text in mine.items())
    assert (elsewhere / "checkpoints" / "precious.txt").is_file() and (elsewhere / "eval" / "precious.txt").is_file()
    # A run sub-folder swapped for a link after the run: its recorded files are not reached through the link.
    (out / "ntp").rename(elsewhere / "ntp")
    (out / "ntp").symlink_to(elsewhere / "ntp")
    before = sorted(p for p in (elsewhere / "ntp").rglob("*"))
    remove_run(out)
    assert sorted(p for p in (elsewhere / "ntp").rglob("*")) == before
    assert list_checkpoints(elsewhere / "ntp" / "checkpoints")
    assert not (out / "recipe.json").exists() and all(p.read_text() == text for p, text in mine.items())


def test_a_users_file_where_a_run_writes_its_metrics_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[0] == 0
    (out / "top").mkdir()
    (out / "top" / "metrics.jsonl").write_text("my own notes\n")  # not recorded: the user's
    _error(*_run(["stargraph", "run", "smoke", *TINY[:-1], "top", "--out", out, "--overwrite"], capsys)[::2],
           "foresight did not write it")
    assert (out / "top" / "metrics.jsonl").read_text() == "my own notes\n"


def test_overwrite_of_a_run_without_a_manifest_is_refused(tmp_path, capsys):
    from foresight.io import MANIFEST

    out = tmp_path / "out"
    assert _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[0] == 0
    (out / MANIFEST).unlink()  # a run folder written by an older foresight
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", out, "--overwrite"], capsys)[::2],
           "no record of the files foresight wrote")
    assert list_checkpoints(out / "ntp" / "checkpoints")


def test_resume_needs_something_to_resume(tmp_path, capsys):
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / "typo", "--resume"], capsys)[::2],
           "holds no checkpoint to continue from")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "file").write_text("x")
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / "file"], capsys)[::2], "is a file")


def test_a_second_concurrent_run_fails_at_once_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # A live owner: this test's parent process (alive, not us).
    (out / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "token": "x"}))
    line = _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[::2], "is in use by process")
    assert str(os.getppid()) in line and not (out / "ntp").exists()
    # Another host's lock is never guessed dead.
    (out / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "token": "x"}))
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[::2], "on elsewhere.invalid")
    # A dead owner on this host: stale, taken over with a note.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "token": "x"}))
    code, _, err = _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)
    assert code == 0 and "stale lock" in err, err
    assert not (out / LOCK).exists()


def test_two_processes_into_one_folder(tmp_path):
    """Two real processes started together: exactly one trains, the other stops at once with one line."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "foresight", "stargraph", "run", "smoke", *TINY, "--set", "train.steps=30",
           "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert ("is in use by process" in loser or "already holds a run" in loser) and "Traceback" not in loser


def test_resume_falls_back_past_a_broken_newest_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[0] == 0
    folder = out / "ntp" / "checkpoints"
    newest = folder / "step_00000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk on another tool's copy
    code, _, err = _run(["stargraph", "run", "smoke", *TINY, "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert "skipped a broken checkpoint, using step_00000002.safetensors" in err and "step_00000004" in err
    assert load_checkpoint(out / "ntp")["step"] == 4  # steps 3-4 trained again and saved


def test_an_unreadable_newest_checkpoint_is_an_error_not_broken(tmp_path, capsys, monkeypatch):
    """Issue 21: EACCES on the newest checkpoint stops the resume in one line (exit 1); the file is kept."""
    import errno

    out = tmp_path / "out"
    assert _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[0] == 0
    newest = out / "ntp" / "checkpoints" / "step_00000004.safetensors"
    content = newest.read_bytes()
    if os.geteuid() == 0:  # root reads anything: inject the error where the kernel would raise it
        real = os.open

        def deny(path, flags, *args, **kwargs):
            if str(path) == str(newest) and not flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    else:
        newest.chmod(0)
    code, _, err = _run(["stargraph", "run", "smoke", *TINY, "--set", "train.steps=6", "--out", out, "--resume"],
                        capsys)
    line = _error(code, err, "permission denied", status=1)
    assert "step_00000004.safetensors" in line and "(EACCES)" in line and "skipped" not in err
    monkeypatch.undo()
    newest.chmod(0o644)
    assert newest.read_bytes() == content  # not overwritten


def test_an_unreadable_sharded_checkpoint_folder_is_an_error(tmp_path, monkeypatch):
    import errno

    folder = tmp_path / "checkpoints"
    (folder / "step_00000004").mkdir(parents=True)  # a sharded checkpoint whose folder cannot be listed
    real = os.listdir

    def deny(path="."):
        if str(path) == str(folder / "step_00000004"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", deny)
    with pytest.raises(PermissionError):
        list_checkpoints(folder)


def test_a_mismatching_checkpoint_names_keys_and_shapes(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)[0] == 0
    _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", out, "--resume", "--set",
                  "model.intermediate_size=48"], capsys)[::2],
           "--resume: model.intermediate_size was 64 in the run, 48 now")  # the setting first (issue 21)
    line = _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", out, "--resume", "--allow-changes", "--set",
                         "model.intermediate_size=48"], capsys)[::2], "does not match this recipe's model")
    assert "mlp" in line and "(checkpoint (64, 32), model (48, 32))" in line


def test_divergence_is_counted_and_stops_the_run(tmp_path, capsys, monkeypatch):
    import foresight.train.trainer as trainer_module

    real = trainer_module.clip_grad_norm
    calls = {"n": 0}

    def flaky(params, max_norm):  # step 2's gradient norm is NaN; the rest are real
        calls["n"] += 1
        norm = real(params, max_norm)
        return torch.full_like(norm, float("nan")) if calls["n"] == 2 else norm

    monkeypatch.setattr(trainer_module, "clip_grad_norm", flaky)
    out = tmp_path / "out"
    code, stdout, err = _run(["stargraph", "run", "smoke", *TINY, "--out", out], capsys)
    assert code == 0, err
    assert "warning: step 2: non-finite loss or gradient norm" in err and "warning" not in stdout
    assert json.loads((out / "ntp" / "result.json").read_text())["skipped_steps"] == 1
    records = [json.loads(line) for line in (out / "ntp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if r["kind"] == "train"] == [0, 1, 1, 1]

    monkeypatch.setattr(trainer_module, "clip_grad_norm", lambda params, max_norm: torch.tensor(float("nan")))
    line = _error(*_run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / "nan", "--set",
                         "train.max_skipped_steps=3"], capsys)[::2], "training diverged", status=1)
    assert "up to step 3" in line and "train.lr=" in line


@pytest.mark.parametrize("value, needle", [("inf", "finite"), (".nan", "finite"), ("1e400", "finite"),
                                           ("1e300", "(0, 1]"), ("0", "(0, 1]"), ("-1", "(0, 1]")])
def test_absurd_learning_rates_are_refused(value, needle, tmp_path, capsys):
    _error(*_run(["stargraph", "run", "smoke", "--set", f"train.lr={value}", "--out", tmp_path / "o"], capsys)[::2],
           needle)
    assert not (tmp_path / "o").exists()
