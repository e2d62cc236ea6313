"""Confinement by real path: every file foresight reads from a folder the user named resolves, after symbolic
links, inside that folder, or the reader stops with one line naming the file and reads nothing.

For each reader (checkpoints and DCP shards, Hugging Face folders and their index shards, heads files, tokenizer
files, prepared data): a link to a file outside the folder, or a name like ``../x`` or ``/abs``, is refused; a link
that stays inside the folder still works. ``import`` copies tokenizer files with a new file's permissions and
never copies one from outside.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from foresight.cli.main import main
from foresight.errors import ForesightError
from foresight.io import file_mode
from foresight.model import ModelConfig
from foresight.train.checkpoint import load_checkpoint
from foresight.train.lm import TrainableLM
from foresight.train.state_file import save_state

CFG = ModelConfig(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=8)
STATE_CONFIG = {"model": CFG.__dict__, "objectives": [{"name": "ntp"}]}


def _refused(code: int, err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("foresight: error:")]
    assert code in (1, 2) and len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


def _run(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _move_out(path: Path, outside: Path) -> Path:
    """Move ``path`` to ``outside`` and leave a symbolic link to it in its place."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, outside)
    path.symlink_to(outside)
    return outside


# ------------------------------------------------------------------------------------------- the helper


def test_inside_refuses_names_and_links_that_leave_the_folder(tmp_path):
    from foresight.paths import confine_folder, inside

    folder, secret = tmp_path / "f", tmp_path / "secret"
    (folder / "sub").mkdir(parents=True)
    secret.write_text("private")
    (folder / "a").write_text("x")
    (folder / "sub" / "b").write_text("y")
    (folder / "out").symlink_to(secret)
    (folder / "in").symlink_to(folder / "sub" / "b")
    (folder / "dir_out").symlink_to(tmp_path)
    assert inside(folder, "a") == folder / "a" and inside(folder, "sub/b") == folder / "sub" / "b"
    assert inside(folder, "in").read_text() == "y"  # a link that stays inside is fine
    for name in ("../secret", str(secret), "out", "dir_out/secret", "sub/../../secret", "", None, 3, "a\0b"):
        with pytest.raises(ForesightError, match="not a file inside"):
            inside(folder, name)
    with pytest.raises(ForesightError, match=r"f/out is not a file inside .* resolves to .*secret"):
        inside(folder, "out")  # one line naming the file and where it leads
    link = tmp_path / "link_to_f"
    link.symlink_to(folder)  # the folder named through a link: its real path is the root
    assert inside(link, "a").read_text() == "x"
    with pytest.raises(ForesightError, match="dir_out"):
        confine_folder(folder)
    (folder / "dir_out").unlink()
    (folder / "out").unlink()
    confine_folder(folder)
    (folder / "sub" / "c").symlink_to(secret)  # one level down is where transformers still looks
    with pytest.raises(ForesightError, match="sub/c is not a file inside"):
        confine_folder(folder)
    (folder / "sub" / "c").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../secret"}}))
    with pytest.raises(ForesightError, match="not a file inside"):
        confine_folder(folder)  # and so are the shards an index lists


def test_a_hugging_face_cache_snapshot_may_link_into_its_own_blobs(tmp_path):
    from foresight.paths import inside

    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "blobs" / "1234").write_text("{}")
    (repo / "snapshots" / "abc" / "config.json").symlink_to("../../blobs/1234")
    (tmp_path / "hub" / "secret").write_text("no")
    (repo / "snapshots" / "abc" / "x").symlink_to(tmp_path / "hub" / "secret")
    assert inside(repo / "snapshots" / "abc", "config.json").read_text() == "{}"
    with pytest.raises(ForesightError, match="not a file inside"):
        inside(repo / "snapshots" / "abc", "x")


def test_copy_inside_gives_a_new_file_s_permissions(tmp_path):
    from foresight.paths import copy_inside

    (tmp_path / "f").mkdir()
    src = tmp_path / "f" / "tokenizer.model"
    src.write_bytes(b"spm")
    src.chmod(0o600)
    copy_inside(tmp_path / "f", "tokenizer.model", tmp_path / "out" / "tokenizer.model")
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == b"spm"
    assert (tmp_path / "out" / "tokenizer.model").stat().st_mode & 0o777 == file_mode()


# ------------------------------------------------------------------------------------------- checkpoints


def _dcp(path: Path) -> None:
    """A genuine one-process sharded (DCP) checkpoint of a tiny model."""
    import torch.distributed.checkpoint as dcp

    lm = TrainableLM(CFG, [{"name": "ntp"}])
    dcp.save({"model": lm.state_dict()}, checkpoint_id=path, no_dist=True)
    save_state({"step": 2, "config": STATE_CONFIG}, path / "trainer.safetensors")


@pytest.mark.parametrize("what", ["shard", ".metadata", "trainer.safetensors"])
def test_a_sharded_checkpoint_file_linked_elsewhere_is_not_read(what, tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    _dcp(ckpt)
    name = next(p.name for p in ckpt.iterdir() if p.suffix == ".distcp") if what == "shard" else what
    _move_out(ckpt / name, tmp_path / "elsewhere" / name)
    for target in (ckpt, tmp_path / "run"):
        code, err = _run(["generate", target, "--prompt-ids", "1 2", "--max-new-tokens", "1"], capsys)
        _refused(code, err, name, "not a file inside")
    with pytest.raises(ForesightError, match="not a file inside"):
        load_checkpoint(ckpt)


def test_a_sharded_checkpoint_with_a_link_inside_itself_still_loads(tmp_path):
    ckpt = tmp_path / "step_00000002"
    _dcp(ckpt)
    shard = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
    _move_out(shard, ckpt / "store" / shard.name)
    lm, state = TrainableLM.from_checkpoint(ckpt)
    assert state["step"] == 2 and lm.model.norm.weight.shape == (8,)


def test_a_run_folder_s_checkpoint_linked_elsewhere_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    lm = TrainableLM(CFG, [{"name": "ntp"}])
    path = run / "checkpoints" / "step_00000002.safetensors"
    save_state({"lm": lm.state_dict(), "config": STATE_CONFIG, "step": 2}, path)
    _move_out(path, tmp_path / "elsewhere.safetensors")
    code, err = _run(["generate", run, "--prompt-ids", "1 2", "--max-new-tokens", "1"], capsys)
    _refused(code, err, "step_00000002.safetensors", "not a file inside")
    # the file named directly is the user's own choice
    assert load_checkpoint(tmp_path / "elsewhere.safetensors")["step"] == 2


def test_resume_refuses_a_checkpoint_linked_elsewhere(tmp_path, capsys):
    """``--resume`` neither reads it nor falls back to an older one (which would then be trained over)."""
    out = tmp_path / "out"
    tiny = ["--set", "train.steps=2", "--set", "train.eval_every=0", "--runs", "ntp"]
    assert main(["stargraph", "run", "smoke", *tiny, "--out", str(out)]) == 0
    capsys.readouterr()
    ckpt = out / "ntp" / "checkpoints" / "step_00000002.safetensors"
    _move_out(ckpt, tmp_path / "elsewhere.safetensors")
    code, err = _run(["stargraph", "run", "smoke", *tiny, "--set", "train.steps=3", "--out", out, "--resume"],
                     capsys)
    _refused(code, err, "step_00000002.safetensors", "not a file inside")
    assert ckpt.is_symlink() and not (out / "ntp" / "checkpoints" / "step_00000003.safetensors").exists()


# ------------------------------------------------------------------------------------------- Hugging Face folders


@pytest.fixture
def hf_folder(tmp_path, capsys):
    """An exported folder (with heads and a tokenizer) of a tiny run."""
    from tokenizers import Tokenizer, models

    run = tmp_path / "run"
    torch.manual_seed(0)
    specs = [{"name": "ntp"}, {"name": "top", "window": 4}]
    lm = TrainableLM(CFG, specs)
    (run / "tokenizer").mkdir(parents=True)
    vocab = {"</s>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(14)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(run / "tokenizer" / "tokenizer.json"))
    save_state({"lm": lm.state_dict(), "config": {"model": CFG.__dict__, "objectives": specs,
                                                   "tokenizer": "tokenizer"}, "step": 2},
               run / "checkpoints" / "step_00000002.safetensors")
    assert main(["export", str(run), "--out", str(tmp_path / "hf"), "--with-heads"]) == 0
    capsys.readouterr()
    return tmp_path / "hf"


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "foresight_heads.safetensors",
                                  "tokenizer.json"])
def test_import_refuses_a_file_linked_out_of_the_folder(name, hf_folder, tmp_path, capsys):
    _move_out(hf_folder / name, tmp_path / "elsewhere" / name)
    code, err = _run(["import", hf_folder, "--out", tmp_path / "imported"], capsys)
    _refused(code, err, name, "not a file inside")
    assert not (tmp_path / "imported" / "tokenizer" / name).exists()


def test_import_links_inside_the_folder_still_work(hf_folder, tmp_path, capsys):
    _move_out(hf_folder / "model.safetensors", hf_folder / "weights" / "model.safetensors")
    _move_out(hf_folder / "tokenizer.json", hf_folder / "weights" / "tokenizer.json")
    code, err = _run(["import", hf_folder, "--out", tmp_path / "imported"], capsys)
    assert code == 0, err
    assert not (tmp_path / "imported" / "tokenizer" / "tokenizer.json").is_symlink()


def test_import_never_copies_a_private_tokenizer_model_from_elsewhere(hf_folder, tmp_path, capsys):
    secret = tmp_path / "home" / "private.key"
    secret.parent.mkdir()
    secret.write_bytes(b"secret")
    secret.chmod(0o600)
    (hf_folder / "tokenizer.model").symlink_to(secret)
    code, err = _run(["import", hf_folder, "--out", tmp_path / "imported"], capsys)
    _refused(code, err, "tokenizer.model", "not a file inside")
    assert not list(tmp_path.glob("imported/**/tokenizer.model"))
    # The same private file inside the folder is the folder's own: copied, with a new file's permissions.
    (hf_folder / "tokenizer.model").unlink()
    shutil.copyfile(secret, hf_folder / "tokenizer.model")
    (hf_folder / "tokenizer.model").chmod(0o600)
    code, err = _run(["import", hf_folder, "--out", tmp_path / "imported2"], capsys)
    assert code == 0, err
    copied = tmp_path / "imported2" / "tokenizer" / "tokenizer.model"
    assert copied.read_bytes() == b"secret" and copied.stat().st_mode & 0o777 == file_mode()


def test_export_copies_no_tokenizer_file_from_elsewhere(hf_folder, tmp_path, capsys):
    run = tmp_path / "run"
    _move_out(run / "tokenizer" / "tokenizer.json", tmp_path / "elsewhere" / "tokenizer.json")
    code, err = _run(["export", run, "--out", tmp_path / "hf2"], capsys)
    _refused(code, err, "tokenizer.json", "not a file inside")


@pytest.mark.slow
def test_eval_hf_backend_refuses_a_folder_with_a_link_out(hf_folder, tmp_path, capsys):
    """lm-eval's HFLM reads whatever it finds in the folder: it is checked before HFLM sees it."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    _move_out(hf_folder / "model.safetensors", tmp_path / "elsewhere" / "model.safetensors")
    code, err = _run(["eval", hf_folder, "--backend", "hf", "--tasks", "arc_easy", "--offline"], capsys)
    _refused(code, err, "model.safetensors", "not a file inside")


def test_index_shards_outside_the_folder(hf_folder, tmp_path):
    """``import``'s reader and the wrapper's loader both refuse an index naming ``../x``, ``/abs`` or a link."""
    from foresight.hf.weights import read_hf_weights

    (tmp_path / "x.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    for name in ("../x.safetensors", str(tmp_path / "x.safetensors")):
        (hf_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": name}}))
        with pytest.raises(ForesightError, match="not a file inside"):
            read_hf_weights(hf_folder)


# ------------------------------------------------------------------------------------------- the wrapper's folders


@pytest.fixture
def wrapped_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    import foresight

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    wrapped = foresight.wrap(LlamaForCausalLM(cfg), [{"name": "ntp"}, {"name": "top", "window": 4}])
    wrapped.save_pretrained(tmp_path / "m")
    return wrapped, tmp_path / "m"


def test_wrapper_loaders_refuse_an_index_shard_outside(wrapped_folder, tmp_path):
    import foresight
    from foresight.wrapper.io import load_into

    wrapped, folder = wrapped_folder
    shutil.move(folder / "model.safetensors", tmp_path / "x.safetensors")
    index = {"metadata": {}, "weight_map": {k: "../x.safetensors" for k in wrapped.model.state_dict()}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ForesightError, match=r"m/\.\./x\.safetensors is not a file inside"):
        load_into(wrapped, folder)
    with pytest.raises(ForesightError, match="not a file inside"):
        foresight.ForesightModel.from_pretrained(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "foresight_heads.safetensors", "config.json"])
def test_wrapper_loaders_refuse_a_file_linked_elsewhere(name, wrapped_folder, tmp_path):
    import foresight
    from foresight.wrapper.io import load_into

    wrapped, folder = wrapped_folder
    _move_out(folder / name, tmp_path / "elsewhere" / name)
    with pytest.raises(ForesightError, match=f"{name} is not a file inside"):
        foresight.ForesightModel.from_pretrained(folder)
    with pytest.raises(ForesightError, match=f"{name} is not a file inside"):
        load_into(wrapped, folder)


def test_wrapper_loaders_follow_links_inside_the_folder(wrapped_folder):
    import foresight
    from foresight.wrapper.io import load_into

    wrapped, folder = wrapped_folder
    _move_out(folder / "model.safetensors", folder / "store" / "model.safetensors")
    load_into(wrapped, folder)
    assert "top" in foresight.ForesightModel.from_pretrained(folder).objectives


# ------------------------------------------------------------------------------------------- tokenizer folders


def test_tokenizer_files_linked_elsewhere(hf_folder, tmp_path, capsys):
    from foresight.data.tokenizer import load_tokenizer

    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copyfile(hf_folder / "tokenizer.json", tok / "tokenizer.json")
    shutil.copyfile(hf_folder / "tokenizer_config.json", tok / "tokenizer_config.json")
    assert load_tokenizer(tok).vocab_size == 16
    for name in ("tokenizer_config.json", "tokenizer.json"):
        _move_out(tok / name, tmp_path / "elsewhere" / name)
        code, err = _run(["tokenizer", "info", tok], capsys)
        _refused(code, err, name, "not a file inside")
        # tokenizer.json named directly is the user's own choice; its siblings are still confined
        code, err = _run(["tokenizer", "info", tok / "tokenizer.json"], capsys)
        if name == "tokenizer.json":
            assert code == 0, err
        else:
            _refused(code, err, name, "not a file inside")
        with pytest.raises(ForesightError, match="not a file inside"):
            load_tokenizer(tok)
        (tok / name).unlink()
        (tok / "store").mkdir(exist_ok=True)
        shutil.move(tmp_path / "elsewhere" / name, tok / "store" / name)
        (tok / name).symlink_to(tok / "store" / name)  # a link inside the folder: fine
        assert load_tokenizer(tok).vocab_size == 16


# ------------------------------------------------------------------------------------------- prepared data


@pytest.fixture
def prepared(tmp_path):
    from foresight.data.prepare import PrepareConfig, prepare
    from foresight.data.sources import Documents, expand_inputs
    from foresight.data.tokenizer import train_tokenizer

    texts = [f"doc {i} " + "words and more words " * (i % 3 + 1) for i in range(20)]
    tok = train_tokenizer(texts, 300)
    (tmp_path / "in").mkdir()
    for i, t in enumerate(texts):
        (tmp_path / "in" / f"{i:02d}.txt").write_text(t)
    docs = Documents(expand_inputs([str(tmp_path / "in")]))
    prepare(docs, tok, tmp_path / "data", PrepareConfig(val_fraction=0.2), progress=False)
    return tmp_path / "data"


def _point_shard_at(folder: Path, name: str) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["file"] = name
    (folder / "meta.json").write_text(json.dumps(meta))


def test_prepared_data_names_only_its_own_shards(prepared, tmp_path, capsys):
    from foresight.data.shards import PreparedData

    shard = prepared / "train_00000.bin"
    (tmp_path / "x.bin").write_bytes(shard.read_bytes())
    lm = TrainableLM(ModelConfig(vocab_size=300, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16,
                                 max_seq_len=8), [{"name": "ntp"}])
    save_state({"lm": lm.state_dict(), "config": {"model": lm.model.cfg.__dict__, "objectives": [{"name": "ntp"}]},
                "step": 1}, tmp_path / "run" / "checkpoints" / "step_00000001.safetensors")
    for name in ("../x.bin", str(tmp_path / "x.bin")):
        _point_shard_at(prepared, name)
        with pytest.raises(ForesightError, match="not a file inside"):
            PreparedData.open(prepared)
        code, err = _run(["eval", tmp_path / "run", "--perplexity", prepared], capsys)
        _refused(code, err, "not a file inside")
    _point_shard_at(prepared, "train_00000.bin")
    os.remove(shard)
    shard.symlink_to(tmp_path / "x.bin")  # the listed name, but a link elsewhere
    with pytest.raises(ForesightError, match="train_00000.bin is not a file inside"):
        PreparedData.open(prepared)
    shard.unlink()
    _move_out(tmp_path / "x.bin", prepared / "store" / "train_00000.bin")
    shard.symlink_to(prepared / "store" / "train_00000.bin")  # a link inside: fine
    assert len(PreparedData.open(prepared, verify="full").train) > 0


@pytest.mark.parametrize("name", ["meta.json", "tokenizer/tokenizer.json"])
def test_prepared_data_metadata_and_tokenizer_linked_elsewhere(name, prepared, tmp_path):
    from foresight.data.shards import PreparedData

    _move_out(prepared / name, tmp_path / "elsewhere" / name)
    with pytest.raises(ForesightError, match="not a file inside"):
        PreparedData.open(prepared)
