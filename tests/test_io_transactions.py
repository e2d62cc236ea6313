"""``foresight.io``'s folder transactions (issue 21, item 4): a folder is swapped into place whole or not at all,
with or without the system's atomic exchange, and its completion record lists what it holds."""

from __future__ import annotations

import json
import os

import pytest

import foresight.io as fio
from foresight.errors import ForesightError


def _folder(path, **files):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


@pytest.mark.parametrize("exchange", [True, False])
def test_a_folder_is_replaced_whole(tmp_path, monkeypatch, exchange):
    if not exchange:  # a system without renameat2(RENAME_EXCHANGE): the old folder is renamed aside first
        monkeypatch.setattr(fio, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "out", old="1", stale="x")
    with fio.folder_transaction(target, "test-format") as tmp:
        assert fio.is_unfinished(tmp) and tmp.parent == tmp_path
        (tmp / "new").write_text("2")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "deep").write_text("3")
    assert sorted(os.listdir(target)) == [fio.RECORD, "new", "sub"]  # nothing of the old folder stays
    record = fio.read_record(target)
    assert record["format"] == "test-format" and record["files"] == ["new", "sub/deep"]
    assert os.listdir(tmp_path) == ["out"]  # neither the temporary nor the old copy is left


def test_a_failed_write_leaves_the_old_folder_untouched(tmp_path):
    target = _folder(tmp_path / "out", old="1")
    with pytest.raises(RuntimeError), fio.folder_transaction(target, "test-format") as tmp:
        (tmp / "half").write_text("2")
        raise RuntimeError("disk full")
    assert os.listdir(target) == ["old"] and os.listdir(tmp_path) == ["out"]


def test_a_dead_writers_temporary_is_removed_a_live_ones_kept(tmp_path):
    dead = _folder(tmp_path / ".out.999999999-abc.tmp")  # no such process
    live = _folder(tmp_path / f".out.{os.getppid()}-abc.tmp")
    assert fio.clean_dead_temporaries(tmp_path / "out") == [dead]
    assert live.is_dir()


def test_a_damaged_or_incomplete_record_is_one_line(tmp_path):
    folder = _folder(tmp_path / "f", a="1")
    assert fio.read_record(folder) is None
    fio.write_record(folder, "test-format")
    assert fio.read_record(folder)["files"] == ["a"]
    (folder / "a").unlink()
    with pytest.raises(ForesightError, match="a, listed in foresight_complete.json, is missing"):
        fio.read_record(folder)
    for text in ("{", json.dumps({"format": "x", "version": 99, "files": []}), json.dumps([1])):
        (folder / fio.RECORD).write_text(text)
        with pytest.raises(ForesightError, match=str(folder)):
            fio.read_record(folder)


def test_only_a_run_folder_with_a_manifest_records_writes(tmp_path):
    fio.write_text(tmp_path / "a" / "x.txt", "not recorded: no manifest")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / fio.MANIFEST).touch()
    fio.write_text(tmp_path / "run" / "r" / "checkpoints" / "s.txt", "recorded")
    with fio.folder_transaction(tmp_path / "run" / "r" / "hf", "test-format") as tmp:
        (tmp / "inside").write_text("noted as part of the tree")
    lines = [json.loads(line) for line in (tmp_path / "run" / fio.MANIFEST).read_text().splitlines()]
    # the files inside the temporary folder are not listed one by one: the folder is, as a whole
    assert lines == [{"path": "r/checkpoints/s.txt", "kind": "file"}, {"path": "r/hf", "kind": "tree"}]
