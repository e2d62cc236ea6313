"""No checkpoint runs code when foresight reads it.

Every command and library function that opens a checkpoint is handed a crafted one whose pickle, if unpickled
the ordinary way, runs a shell command that creates a marker file; each must refuse it with one line and the
marker must not exist. The first test shows the payload does run when unpickled unsafely, so the others can
fail. Hugging Face index files cannot point outside their folder either.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch

from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.model import ModelConfig
from foresight.train.checkpoint import load_checkpoint
from foresight.train.lm import TrainableLM
from foresight.train.state_file import load_state, save_state

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "stargraph" / "smoke.yaml"
TINY = ["--set", "train.steps=2", "--set", "train.eval_every=0", "--runs", "ntp"]


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _evil_state(marker: Path) -> dict:
    cfg = ModelConfig(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=8)
    return {"lm": {"model.norm.weight": _Payload(marker)}, "config": {"model": cfg.__dict__,
                                                                       "objectives": [{"name": "ntp"}]}, "step": 2}


def _write_evil(kind: str, folder: Path, marker: Path) -> Path:
    """A crafted checkpoint of ``kind`` in ``folder`` (a checkpoints folder); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "pt":  # torch.save's zip container
        path = folder / "step_00000002.pt"
        torch.save(_evil_state(marker), path)
    elif kind == "raw":  # a bare pickle under a checkpoint's name (torch.load's legacy path)
        path = folder / "step_00000002.pt"
        path.write_bytes(pickle.dumps(_evil_state(marker), protocol=2))
    elif kind in ("dcp_metadata", "dcp_trainer"):  # a sharded (DCP) checkpoint folder
        path = folder / "step_00000002"
        _real_dcp(path)
        if kind == "dcp_metadata":
            (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
        else:
            (path / "trainer.safetensors").unlink()
            torch.save(_evil_state(marker), path / "trainer.pt")
    else:
        raise AssertionError(kind)
    return path


def _real_dcp(path: Path) -> None:
    """A genuine one-process DCP checkpoint of a tiny model (so only the crafted part is bad)."""
    import torch.distributed.checkpoint as dcp

    cfg = ModelConfig(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=8)
    lm = TrainableLM(cfg, [{"name": "ntp"}])
    dcp.save({"model": lm.state_dict()}, checkpoint_id=path, no_dist=True)
    save_state({"step": 2, "config": {"model": cfg.__dict__, "objectives": [{"name": "ntp"}]}},
               path / "trainer.safetensors")


KINDS = ["pt", "raw", "dcp_metadata", "dcp_trainer"]


def test_the_payload_runs_when_unpickled_unsafely(tmp_path):
    """The control: these files do run code under an ordinary unpickler, so the tests below can fail."""
    marker = tmp_path / "ran"
    path = _write_evil("pt", tmp_path / "ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    path = _write_evil("dcp_metadata", tmp_path / "ckpt2", marker)
    pickle.loads((path / ".metadata").read_bytes())
    assert marker.exists()


def _one_line_refusal(code: int, err: str, marker: Path) -> None:
    assert not marker.exists(), "the checkpoint ran code"
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("foresight: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["export", "generate", "eval"])
def test_commands_refuse_a_crafted_checkpoint(kind, command, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = _write_evil(kind, tmp_path / "run" / "checkpoints", marker)
    for target in (path, tmp_path / "run"):  # the checkpoint itself, and a run folder whose newest it is
        args = {"export": ["export", target, "--out", tmp_path / "hf"],
                "generate": ["generate", target, "--prompt-ids", "1 2"],
                "eval": ["eval", target, "--perplexity", tmp_path / "data"]}[command]
        code = main([str(a) for a in args])
        _one_line_refusal(code, capsys.readouterr().err, marker)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["train", "stargraph"])
def test_resume_refuses_a_crafted_checkpoint(kind, command, tmp_path, capsys):
    marker = tmp_path / "ran"
    out = tmp_path / "out"
    _write_evil(kind, out / "ntp" / "checkpoints", marker)
    head = ["train", str(SMOKE)] if command == "train" else ["stargraph", "run", "smoke"]
    code = main([*head, *TINY, "--out", str(out), "--resume"])
    _one_line_refusal(code, capsys.readouterr().err, marker)


@pytest.mark.parametrize("kind", KINDS)
def test_library_loaders_refuse_a_crafted_checkpoint(kind, tmp_path):
    from foresight.hf import load_pretrained_into, pretrained_model_config

    marker = tmp_path / "ran"
    path = _write_evil(kind, tmp_path / "run" / "checkpoints", marker)
    cfg = ModelConfig(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=8)
    loaders = [lambda p: load_checkpoint(p), lambda p: TrainableLM.from_checkpoint(p),
               lambda p: pretrained_model_config(p),
               lambda p: load_pretrained_into(TrainableLM(cfg, [{"name": "ntp"}]), p)]
    for load in loaders:
        for target in (path, tmp_path / "run"):
            with pytest.raises(ForesightError):
                load(target)
            assert not marker.exists()


def test_text_init_from_refuses_a_crafted_checkpoint(tmp_path, capsys):
    from foresight.data.demo_corpus import demo_files
    from foresight.data.prepare import PrepareConfig, prepare
    from foresight.data.sources import Documents
    from foresight.data.tokenizer import train_tokenizer

    files = demo_files(max_bytes=40_000)
    prepare(Documents(files, text_unit="paragraph"), train_tokenizer(Documents(files), 260), tmp_path / "data",
            PrepareConfig(val_fraction=0.1), progress=False)
    marker = tmp_path / "ran"
    path = _write_evil("pt", tmp_path / "old" / "checkpoints", marker)
    recipe = tmp_path / "text.yaml"
    recipe.write_text(json.dumps({"task": "text", "text": {"data": str(tmp_path / "data"), "seq_len": 8,
                                                           "init_from": str(path)},
                                  "train": {"steps": 1, "batch_size": 2}, "runs": {"ntp": [{"name": "ntp"}]}}))
    code = main(["train", str(recipe), "--out", str(tmp_path / "out")])
    _one_line_refusal(code, capsys.readouterr().err, marker)


def test_import_refuses_a_crafted_pytorch_bin(tmp_path, capsys):
    """``foresight import`` of a folder whose ``pytorch_model.bin`` is a crafted pickle."""
    from foresight.hf import export_lm

    cfg = ModelConfig(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=8)
    export_lm(TrainableLM(cfg, [{"name": "ntp"}]), [{"name": "ntp"}], tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"model.norm.weight": _Payload(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    code = main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")])
    _one_line_refusal(code, capsys.readouterr().err, marker)


def test_dcp_non_tensor_entries_are_read_without_code(tmp_path):
    """DCP unpickles non-tensor entries with ``weights_only=False``; ours go through ``weights_only=True``."""
    import io

    from foresight.train.checkpoint import _safe_planner

    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        _safe_planner().load_bytes(None, buf)
    assert not marker.exists()


def test_hf_index_shards_stay_inside_their_folder(tmp_path):
    from foresight.hf.weights import read_hf_weights, write_safetensors

    outside = tmp_path / "outside.safetensors"
    write_safetensors({"model.norm.weight": torch.ones(2)}, outside)
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("../outside.safetensors", str(outside), "link.safetensors"):
        if name == "link.safetensors":
            (folder / name).symlink_to(outside)
        index = {"weight_map": {"model.norm.weight": name}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(ForesightError, match="not a file inside"):
            read_hf_weights(folder)
    write_safetensors({"model.norm.weight": torch.ones(2)}, folder / "sub" / "a.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight":
                                                                                    "sub/a.safetensors"}}))
    assert torch.equal(read_hf_weights(folder)["model.norm.weight"], torch.ones(2))  # a sub-folder is fine


def test_state_file_round_trip_is_exact(tmp_path):
    """Every type a checkpoint holds comes back as it went in, tensors bit for bit (shared ones too)."""
    w = torch.randn(3, 5)
    state = {"lm": {"a": w, "tied": w, "view": w[1:]}, "opt": {"state": {0: {"step": torch.tensor(3.0),
                                                                          "m": torch.randn(2, dtype=torch.bfloat16)}},
                                                           "param_groups": [{"betas": (0.9, 0.95), "lr": float("inf"),
                                                                             "params": [0, 1], "foreach": None}]},
             "rng": [torch.get_rng_state()], "evals": [{"step": 2, "x": 0.1}], "name": "r", "flag": True,
             "empty": torch.empty(0, 4), "__odd": 1}
    save_state(state, tmp_path / "s.safetensors")
    back = load_state(tmp_path / "s.safetensors")
    assert back.keys() == state.keys() and back["opt"]["state"].keys() == {0}
    for key in ("a", "tied", "view"):
        assert torch.equal(back["lm"][key], state["lm"][key])
    assert back["opt"]["param_groups"] == state["opt"]["param_groups"]
    assert back["opt"]["state"][0]["m"].dtype == torch.bfloat16 and torch.equal(back["opt"]["state"][0]["m"],
                                                                                state["opt"]["state"][0]["m"])
    assert torch.equal(back["rng"][0], state["rng"][0]) and back["empty"].shape == (0, 4)
    assert back["evals"] == state["evals"] and back["name"] == "r" and back["flag"] is True and back["__odd"] == 1
    assert oct((tmp_path / "s.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_genuine_sharded_checkpoint_still_loads(tmp_path):
    """The positive control of the DCP path: the restricted reader admits what DCP really writes."""
    _real_dcp(tmp_path / "step_00000002")
    lm, state = TrainableLM.from_checkpoint(tmp_path / "step_00000002")
    assert state["step"] == 2 and lm.model.norm.weight.shape == (8,)


def test_an_old_pt_checkpoint_resumes_exactly(tmp_path):
    """Old ``step_*.pt`` checkpoints (what foresight wrote before: a pickle of plain data and tensors) load
    through ``weights_only`` and resume bit for bit; the next checkpoint is written as safetensors."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_trainer import _train_losses, _trainer

    full = _trainer(tmp_path / "full", ckpt_every=4, steps=6)
    full.fit()
    cut = _trainer(tmp_path / "cut", ckpt_every=4, steps=6)
    original = cut.batch_fn

    def dying(step):
        if step == 4:  # dies in step 5, after the checkpoint at step 4
            raise KeyboardInterrupt
        return original(step)

    cut.batch_fn = dying
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    folder = tmp_path / "cut" / "checkpoints"
    new = folder / "step_00000004.safetensors"
    torch.save(load_state(new), folder / "step_00000004.pt")  # the old format, byte for byte the old content
    new.unlink()
    resumed = _trainer(tmp_path / "cut", ckpt_every=4, steps=6)
    resumed.fit(resume=True)
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "full")
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000004.pt", "step_00000006.safetensors"]
