"""Fault injection: operating-system failures and bad files end as one line naming the path and what to do,
with nothing half-written left behind.

Disk full and read-only file systems are real (a small tmpfs, mounted when the tests run as root; skipped
otherwise); permission errors are real for a normal user and injected for root (root ignores permissions).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from foresight.cli.main import main

TINY = ["--set", "train.steps=2", "--set", "train.eval_every=0", "--runs", "ntp"]


def _run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code: int, err: str, *fragments: str, status: int = 1) -> str:
    lines = [line for line in err.splitlines() if line.startswith("foresight: error:")]
    assert code == status and len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


def _leftovers(root: Path) -> list[Path]:
    """Temporary files or folders anywhere under ``root``."""
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs; yields a function (size, read_only) -> its path. Root only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_disk_full_while_checkpointing(tmpfs, capsys):
    disk = tmpfs("200k")  # recipe and metrics fit; the 280 kB checkpoint does not
    line = _one_line(*_run(["stargraph", "run", "smoke", *TINY, "--out", disk / "run"], capsys)[::2],
                     "no space left on the device", "step_00000002.safetensors", "(ENOSPC)")
    assert str(disk) in line
    assert not _leftovers(disk) and not list((disk / "run" / "ntp" / "checkpoints").iterdir())
    assert not (disk / "run" / ".foresight.lock").exists()


def test_disk_full_while_exporting(tmpfs, tmp_path, capsys):
    assert main(["stargraph", "run", "smoke", *TINY, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    disk = tmpfs("40k")  # the trunk alone is about 80 kB
    _one_line(*_run(["export", tmp_path / "run" / "ntp", "--out", disk / "hf"], capsys)[::2],
              "no space left", "(ENOSPC)")
    assert not (disk / "hf").exists() and not _leftovers(disk)  # no half-exported model


def test_read_only_output(tmpfs, capsys):
    ro = tmpfs("1m", read_only=True)
    _one_line(*_run(["stargraph", "run", "smoke", *TINY, "--out", ro / "run"], capsys)[::2],
              str(ro / "run"), "read-only", "(EROFS)")


def test_permission_denied(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: inject the error where the kernel would raise it
        real = os.open

        def deny(path, flags, *args, **kwargs):
            if str(path).startswith(str(folder)) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    else:
        folder.chmod(0o555)
    _one_line(*_run(["stargraph", "run", "smoke", *TINY, "--out", folder], capsys)[::2],
              str(folder), "permission denied", "(EACCES)")


def test_paths_that_cannot_be(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _one_line(*_run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / "file" / "run"], capsys)[::2],
              "file where a folder is expected", "(ENOTDIR)")
    _one_line(*_run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / ("x" * 300)], capsys)[::2],
              "too long", "(ENAMETOOLONG)")
    (tmp_path / "folder").mkdir()
    _one_line(*_run(["stargraph", "generate", "--deg", "2", "--path", "3", "--nodes", "10", "--count", "2",
                     "--out", tmp_path / "folder"], capsys)[::2], str(tmp_path / "folder"), "(EISDIR)")
    _one_line(*_run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / "file"], capsys)[::2], "is a file",
              status=2)
    _one_line(*_run(["prepare", "--demo", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "file",
                     "--overwrite"], capsys)[::2], "is a file", status=2)
    assert (tmp_path / "file").read_text() == "x"  # never replaced
    assert not _leftovers(tmp_path)


def test_binary_recipe_is_one_line(tmp_path, capsys):
    (tmp_path / "r.yaml").write_bytes(bytes(range(128, 256)) * 4)
    _one_line(*_run(["train", tmp_path / "r.yaml"], capsys)[::2], "r.yaml", status=2)


def test_orphan_temporaries_are_cleaned_at_the_next_start(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["stargraph", "run", "smoke", *TINY, "--set", "train.ckpt_every=1", "--out", out], capsys)[0] == 0
    orphans = [out / "ntp" / "checkpoints" / ".step_00000003.safetensors.k9x2.tmp",
               out / "ntp" / "checkpoints" / ".step_00000003.tmp",  # a sharded checkpoint's temporary folder
               out / ".recipe.json.ab12.tmp", out / "ntp" / ".result.json.zz.tmp"]
    for p in orphans:
        p.mkdir() if p.suffix == ".tmp" and p.name.count(".") == 2 else p.write_bytes(b"half")
    code, _, err = _run(["stargraph", "run", "smoke", *TINY, "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in orphans)


def test_prepare_overwrite_only_replaces_prepared_data(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "meta.json").write_text('{"format": "something else"}')
    _one_line(*_run(["prepare", "--demo", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "mine",
                     "--overwrite"], capsys)[::2], "does not mark it as data prepared by foresight", status=2)
    assert (tmp_path / "mine" / "meta.json").is_file()


def test_written_files_respect_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert _run(["stargraph", "run", "smoke", *TINY, "--out", tmp_path / "run"], capsys)[0] == 0
        assert _run(["export", tmp_path / "run" / "ntp", "--out", tmp_path / "hf"], capsys)[0] == 0
    finally:
        os.umask(old)
    files = [*(tmp_path / "run").rglob("*.safetensors"), *(tmp_path / "hf").iterdir(),
             tmp_path / "run" / "ntp" / "result.json"]
    assert len(files) >= 4
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))


def test_data_dependent_limits_fail_before_any_model_is_built(tmp_path, capsys):
    _one_line(*_run(["stargraph", "run", "smoke", "--set", "stargraph.eval_batch_size=0", "--out", tmp_path / "o"],
                    capsys)[::2], "stargraph.eval_batch_size must be >= 1", status=2)
    for args, needle in [(["--batch-size", "0"], "--batch-size must be >= 1"), (["--seq-len", "0"], "--seq-len"),
                         (["--limit", "0"], "--limit must be > 0"), (["--ppl-batches", "-1"], "--ppl-batches")]:
        _one_line(*_run(["eval", tmp_path / "no-run", "--perplexity", tmp_path / "d", *args], capsys)[::2], needle,
                  status=2)
    assert not (tmp_path / "o").exists()
