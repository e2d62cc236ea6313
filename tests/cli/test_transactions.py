"""Writes are transactions (issue 21, item 4): a real ``kill -9`` in the middle of ``export`` or ``prepare
--overwrite`` leaves the old complete folder or the new complete one, never a mix, and the temporary folder a
kill leaves is refused by the readers and removed by the next write.

Each child process runs the library call with one function patched to stall at the moment under test (before
the folder is swapped into place, or just after), says so through a file, and is then killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.shards import PreparedData
from foresight.data.sources import Documents, expand_inputs
from foresight.data.tokenizer import train_tokenizer
from foresight.errors import ForesightError
from foresight.hf import export_lm, import_hf
from foresight.hf.heads import HEADS_FILE
from foresight.io import RECORD

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

STALL = """
import pathlib, time
READY = pathlib.Path({ready!r})
def stall(*args, **kwargs):
    READY.write_text("stalled")
    time.sleep(600)
"""
# Where to stall: before the folder is put in place (its record is the last thing written), or just after.
BEFORE = """
import foresight.io
foresight.io.write_record = stall
"""
AFTER = """
import foresight.io
_swap = foresight.io.swap_into_place
def swap_then_stall(new, target):
    _swap(new, target)
    stall()
foresight.io.swap_into_place = swap_then_stall
"""


def _kill_midway(tmp_path: Path, where: str, work: str) -> None:
    """Run ``work`` in a child Python patched by ``where``; SIGKILL it once it stalls there."""
    ready = tmp_path / "stalled"
    script = tmp_path / "child.py"
    script.write_text(STALL.format(ready=str(ready)) + where + textwrap.dedent(work))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if child.poll() is not None:
            pytest.fail(f"the child ended before it stalled: {child.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the child never stalled")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    ready.unlink()


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))


# --------------------------------------------------------------------------------------------------- export

EXPORT = """
import torch
from foresight.hf import export_lm
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM
cfg = ModelConfig(vocab_size=29, hidden_size=16, n_layers=1, n_heads=2, n_kv_heads=1, intermediate_size=24,
                  max_seq_len=16)
torch.manual_seed({seed})
lm = TrainableLM(cfg, {specs!r})
export_lm(lm, {specs!r}, {out!r}, with_heads=True, force=True)
"""


def _export(out: Path, seed: int, specs: list[dict]) -> None:
    exec(EXPORT.format(seed=seed, specs=specs, out=str(out)), {})


def _weights(out: Path) -> bytes:
    return (out / "model.safetensors").read_bytes()


@pytest.mark.slow  # a child process that imports torch: about 5 s
@pytest.mark.parametrize("where", ["before", "after"])
def test_kill_during_export_force_leaves_the_old_export_or_the_new(tmp_path, where):
    out = tmp_path / "hf"
    old_specs, new_specs = [{"name": "ntp"}, {"name": "top", "window": 4}], [{"name": "ntp"}]
    _export(out, 0, old_specs)
    old = _weights(out)
    _kill_midway(tmp_path, BEFORE if where == "before" else AFTER,
                 EXPORT.format(seed=1, specs=new_specs, out=str(out)))
    lm, specs, report = import_hf(out)  # whole, and exactly one of the two
    if where == "before":
        assert _weights(out) == old and specs == old_specs and report.objectives == {"top": "loaded"}
    else:
        assert _weights(out) != old and specs == new_specs  # no stale heads file of the old export
        assert not (out / HEADS_FILE).exists()
    assert json.loads((out / RECORD).read_text())["format"] == "foresight-export"
    (left,) = _temporaries(out)  # what the kill left: refused by readers, removed by the next write
    with pytest.raises(ForesightError, match="interrupted"):
        import_hf(left)
    _export(out, 2, new_specs)
    assert not _temporaries(out)


@pytest.mark.slow
def test_kill_during_a_first_export_leaves_no_folder(tmp_path):
    out = tmp_path / "hf"
    _kill_midway(tmp_path, BEFORE, EXPORT.format(seed=1, specs=[{"name": "ntp"}], out=str(out)))
    assert not out.exists() and len(_temporaries(out)) == 1


# -------------------------------------------------------------------------------------------------- prepare

TEXTS = [f"document {i}: " + "some words and code() " * (i % 5 + 1) + f"end {i}\n" for i in range(40)]
PREPARE = """
from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.sources import Documents, expand_inputs
from foresight.data.tokenizer import load_tokenizer
prepare(Documents(expand_inputs([{text!r}])), load_tokenizer({tok!r}), {out!r}, PrepareConfig(val_fraction={vf}),
        overwrite=True, progress=False)
"""


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "in").mkdir()
    for i, t in enumerate(TEXTS):
        (tmp_path / "in" / f"{i:02d}.txt").write_text(t)
    train_tokenizer(TEXTS, 300).save(tmp_path / "tok")
    return tmp_path / "in", tmp_path / "tok"


@pytest.mark.parametrize("where", ["before", "after"])
def test_kill_during_prepare_overwrite_keeps_the_old_data_or_the_new(tmp_path, corpus, where):
    from foresight.data.tokenizer import load_tokenizer

    text, tok = corpus
    out = tmp_path / "data"
    old = prepare(Documents(expand_inputs([str(text)])), load_tokenizer(tok), out, PrepareConfig(val_fraction=0.1),
                  progress=False)
    _kill_midway(tmp_path, BEFORE if where == "before" else AFTER,
                 PREPARE.format(text=str(text), tok=str(tok), out=str(out), vf=0.3))
    data = PreparedData.open(out, verify="full")  # whole
    assert data.meta["settings"]["val_fraction"] == (0.1 if where == "before" else 0.3)
    if where == "before":
        assert data.meta["splits"] == old["splits"]
    (left,) = _temporaries(out)
    with pytest.raises(ForesightError, match="interrupted"):
        PreparedData.open(left)
    prepare(Documents(expand_inputs([str(text)])), load_tokenizer(tok), out, PrepareConfig(), overwrite=True,
            progress=False)
    assert not _temporaries(out)


# ------------------------------------------------------------------------------------------ completion record

def test_a_foresight_folder_without_its_record_is_refused_a_plain_one_loads(tmp_path):
    specs = [{"name": "ntp"}, {"name": "top", "window": 4}]
    _export(tmp_path / "heads", 0, specs)
    (tmp_path / "heads" / RECORD).unlink()  # what an export interrupted before transactions could leave
    with pytest.raises(ForesightError, match=f"no {RECORD}"):
        import_hf(tmp_path / "heads")
    from foresight.hf import load_pretrained_into, pretrained_model_config

    with pytest.raises(ForesightError, match=f"no {RECORD}"):  # text.init_from reads the folder through these
        pretrained_model_config(tmp_path / "heads")
    with pytest.raises(ForesightError, match=f"no {RECORD}"):
        load_pretrained_into(None, tmp_path / "heads")
    _export(tmp_path / "plain", 0, [{"name": "ntp"}])
    (tmp_path / "plain" / RECORD).unlink()  # no foresight heads: indistinguishable from a transformers folder
    import_hf(tmp_path / "plain")
    _export(tmp_path / "listed", 0, specs)
    (tmp_path / "listed" / HEADS_FILE).unlink()  # the record lists a file that is gone
    with pytest.raises(ForesightError, match=f"{HEADS_FILE}, listed in {RECORD}, is missing"):
        import_hf(tmp_path / "listed")


@pytest.mark.slow  # imports transformers' Llama
def test_a_transformers_folder_still_imports(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=29, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=24, max_position_embeddings=16)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf")


def test_export_force_replaces_only_an_earlier_export(tmp_path):
    lm_specs = [{"name": "ntp"}]
    _export(tmp_path / "hf", 0, lm_specs)
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(ForesightError, match="'notes.txt', which foresight export does not write"):
        _export(tmp_path / "hf", 1, lm_specs)
    assert (tmp_path / "hf" / "notes.txt").read_text() == "mine"
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "data.csv").write_text("1,2")
    from foresight.model import ModelConfig
    from foresight.train.lm import TrainableLM

    lm = TrainableLM(ModelConfig(vocab_size=29, hidden_size=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                 intermediate_size=24, max_seq_len=16), lm_specs)
    with pytest.raises(ForesightError, match="already holds files"):
        export_lm(lm, lm_specs, tmp_path / "own")
    assert os.listdir(tmp_path / "own") == ["data.csv"]


# --------------------------------------------------------------------------------------------------- import

def test_import_needs_force_then_replaces_the_whole_folder(tmp_path):
    from foresight.hf import save_imported
    from foresight.model import ModelConfig
    from foresight.train.lm import TrainableLM

    specs = [{"name": "ntp"}]
    lm = TrainableLM(ModelConfig(vocab_size=29, hidden_size=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                 intermediate_size=24, max_seq_len=16), specs)

    def tokenizer(folder: Path) -> list[str]:
        folder.mkdir()
        (folder / "tokenizer.json").write_text("{}")
        return ["tokenizer.json"]

    out = tmp_path / "imported"
    save_imported(lm, specs, out, tmp_path / "src", tokenizer)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(ForesightError, match="pass --force"):
        save_imported(lm, specs, out, tmp_path / "src")
    save_imported(lm, specs, out, tmp_path / "src", force=True)  # a source without a tokenizer
    assert sorted(os.listdir(out)) == [RECORD, "step_00000000.safetensors"]  # no stale tokenizer/
    TrainableLM.from_checkpoint(out)
    (out / RECORD).unlink()  # an import whose record is missing: may be incomplete
    with pytest.raises(ForesightError, match="imported checkpoint"):
        TrainableLM.from_checkpoint(out)
    (out / "checkpoints").mkdir()  # a run trained into the folder: never replaced
    with pytest.raises(ForesightError, match="'checkpoints', which foresight import does not write"):
        save_imported(lm, specs, out, tmp_path / "src", force=True)


def test_export_force_over_an_export_with_heads_leaves_no_old_heads(tmp_path):
    _export(tmp_path / "hf", 0, [{"name": "ntp"}, {"name": "top", "window": 4}])
    _export(tmp_path / "hf", 1, [{"name": "ntp"}])  # force=True
    assert not (tmp_path / "hf" / HEADS_FILE).exists()
    _, specs, report = import_hf(tmp_path / "hf")
    assert specs == [{"name": "ntp"}] and report.objectives == {}  # not "top loaded" from the old export
